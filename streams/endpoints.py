"""Which model servers an objective may send prompts to, which of them get the API key, and
which model files it may make a worker load.

An objective names servers (``base_url`` of a generator or the judge, ``params.base_url`` of the
reward evaluator), and whoever can write the objectives topic writes objectives. So the worker's
own settings decide: a server is allowed only if its origin (scheme, host, port) is
``openai_base_url``'s or one of ``allowed_endpoints``; ``openai_api_key`` is sent only to
``openai_base_url``'s origin. `prefstream objective apply` refuses an objective naming another
server, a worker ignores it (``agents.objectives.registry``) and the backends refuse to call it.
Likewise a llamacpp model named as a file (``model: x.gguf``) must lie in ``model_dir``.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from streams.settings import Settings, SettingsError

SETTING = "PREFSTREAM_ALLOWED_ENDPOINTS"
_PORTS = {"http": 80, "https": 443}


class EndpointError(ValueError):
    pass


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (lowercase, default port filled in); ``EndpointError``
    for a URL that is not http(s), has no host, or carries credentials."""
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port
    except ValueError as e:
        raise EndpointError(f"{url!r} is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in _PORTS or not parts.hostname:
        raise EndpointError(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise EndpointError(f"{redact(url)!r}: credentials in a model server URL are not allowed")
    return f"{scheme}://{parts.hostname.lower()}:{port or _PORTS[scheme]}"


def redact(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (for logs and answers)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


class Endpoints:
    """The allowlist and the key, from the worker's (or `apply`'s) settings."""

    def __init__(self, settings: Settings) -> None:
        self.key = settings.openai_api_key
        listed = (settings.allowed_endpoints or "").replace("\n", ",").split(",")
        try:
            self.default = origin(settings.openai_base_url) if settings.openai_base_url else None
            self.allowed = {origin(u) for u in listed if u.strip()} | ({self.default} if self.default else set())
        except EndpointError as e:
            raise SettingsError(f"PREFSTREAM_OPENAI_BASE_URL or {SETTING}: {e}") from None

    def problem(self, url: str, where: str) -> str | None:
        """Why ``where`` may not name ``url``, or None."""
        try:
            o = origin(url)
        except EndpointError as e:
            return f"{where}: {e}"
        if o in self.allowed:
            return None
        return (f"{where}: {o} is not an allowed model server; add it to {SETTING} on the workers "
                f"and where you apply objectives (allowed now: {', '.join(sorted(self.allowed)) or 'none'})")

    def check(self, url: str, where: str) -> str:
        """``url``, or ``EndpointError`` when it is not allowed."""
        found = self.problem(url, where)
        if found:
            raise EndpointError(found)
        return url

    def key_for(self, url: str) -> str | None:
        """The API key where ``url`` is ``openai_base_url``'s origin, else None."""
        try:
            return self.key if self.default is not None and origin(url) == self.default else None
        except EndpointError:
            return None


def named(spec) -> list[tuple[str, str]]:
    """``(where, url)`` for every server ``spec`` (an ObjectiveSpec) names itself."""
    out = [(f"synthesis.generators[{i}].base_url", g.base_url)
           for i, g in enumerate(spec.synthesis.generators) if g.base_url]
    if spec.evaluation.judge.base_url:
        out.append(("evaluation.judge.base_url", spec.evaluation.judge.base_url))
    for i, e in enumerate(spec.evaluation.evaluators):
        url = (e.params or {}).get("base_url")
        if url:
            out.append((f"evaluation.evaluators[{i}] ({e.name}).params.base_url", str(url)))
    return out


def model_file(model: str, settings: Settings) -> Path:
    """The file a llamacpp model named ``model`` (ending ``.gguf``) is, inside ``model_dir``;
    ``EndpointError`` when no directory is configured or the name leads outside it."""
    if not settings.model_dir:
        raise EndpointError(f"names the model file {model!r}, but PREFSTREAM_MODEL_DIR is unset: objectives "
                            "may name GGUF files only in the directory the operator sets there")
    root = Path(settings.model_dir).resolve()
    path = (root / model).resolve()  # an absolute name, .. or a link leading out is caught here
    if not path.is_relative_to(root):
        raise EndpointError(f"names the model file {model!r}, outside PREFSTREAM_MODEL_DIR ({root})")
    return path


def model_files(spec) -> list[tuple[str, str]]:
    """``(where, model)`` for every llamacpp model ``spec`` names as a file."""
    models = [(f"synthesis.generators[{i}].model", g) for i, g in enumerate(spec.synthesis.generators)]
    models.append(("evaluation.judge.model", spec.evaluation.judge))
    return [(where, m.model) for where, m in models if m.backend == "llamacpp" and m.model.endswith(".gguf")]


def problems(spec, settings: Settings) -> list[str]:
    """Why the servers and model files ``spec`` names are not allowed by ``settings``, or ``[]``."""
    allowed = Endpoints(settings)
    out = [p for where, url in named(spec) if (p := allowed.problem(url, where))]
    for where, model in model_files(spec):
        try:
            model_file(model, settings)
        except EndpointError as e:
            out.append(f"{where}: {e}")
    return out
