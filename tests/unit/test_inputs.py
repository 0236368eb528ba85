import json

import pytest

from streams.commands.serving.inputs import InputError, read_prompts


def test_gsm8k_and_ifeval_real_lines(data_dir):
    g = list(read_prompts(data_dir / "gsm8k" / "train_first1000.jsonl", limit=5))
    assert len(g) == 5 and all(p.source == "gsm8k" and p.verification.kind == "math" for p in g)
    first = json.loads((data_dir / "gsm8k" / "train_first1000.jsonl").read_text().splitlines()[0])
    assert g[0].verification.answer == first["answer"].split("####")[-1].strip()
    i = list(read_prompts(data_dir / "ifeval" / "input_data.jsonl", limit=5))
    assert all(p.verification.kind == "ifeval" for p in i)
    assert all(len(p.verification.kwargs) == len(p.verification.instruction_id_list) for p in i)
    assert len({p.id for p in g + i}) == 10


def test_chat_and_plain_and_unknown_line(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "id": "given"}) + "\n"
        + json.dumps({"prompt": "hello", "answer": "4"}) + "\n\n"
        + json.dumps({"text": "what?"}) + "\n"
    )
    it = read_prompts(f)
    chat = next(it)
    assert chat.id == "given" and chat.messages[0].content == "hi"
    plain = next(it)
    assert plain.verification.answer == "4"
    with pytest.raises(InputError, match=r"in.jsonl:4: unknown format"):
        next(it)


def test_bad_json_and_bad_role_report_line(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(InputError, match=r":1: .*role"):
        list(read_prompts(f))
    f.write_text("{not json\n")
    with pytest.raises(InputError, match=r":1:"):
        list(read_prompts(f))
