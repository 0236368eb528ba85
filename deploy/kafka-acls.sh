#!/usr/bin/env bash
# Kafka ACLs for one prefstream namespace: who may write what.
#
# Whoever can write the `objectives` topic decides which model servers the workers call, with
# which prompts, and what becomes `chosen`; whoever can write `prompts` or `feedback` feeds the
# pipeline. So each role gets its own SASL user and only the writes it needs:
#
#   ADMIN   `prefstream objective apply/rollback` and the objective Job: creates the topics,
#           writes objectives and objective-history, policies and policy-history (the control
#           topics: which adapters the workers load; nobody else but TRAINER may);
#           `prefstream policy publish/rollback`;
#           `prefstream rejudge` (writes candidates)
#   TRAINER `prefstream train`: writes policies and policy-history (new adapter versions), reads
#           the records it trains on
#   WORKER  the four agents (and relabel): reads every topic, writes only the pipeline's own topics
#   INGEST  `prefstream ingest`: writes prompts and feedback
#   TAP     `prefstream tap` and `submit`: reads the records, writes prompts
#
# Run once per namespace against a cluster whose brokers enforce ACLs
# (authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer and
# allow.everyone.if.no.acl.found=false), as a super user:
#   BOOTSTRAP=kafka:9093 CONFIG=admin.properties NS=prefstream deploy/kafka-acls.sh
# The Kubernetes manifests share one user (secret.yaml); give the objective Job the ADMIN user
# and the agent Deployments the WORKER user before relying on these ACLs (deploy/README.md).
set -euo pipefail

BOOTSTRAP=${BOOTSTRAP:?set BOOTSTRAP=host:port of a broker}
CONFIG=${CONFIG:?set CONFIG to a client properties file with super-user credentials}
NS=${NS:-prefstream}
ADMIN=${ADMIN:-User:prefstream-admin}
WORKER=${WORKER:-User:prefstream-worker}
INGEST=${INGEST:-User:prefstream-ingest}
TAP=${TAP:-User:prefstream-tap}
TRAINER=${TRAINER:-User:prefstream-trainer}

acl() { kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config "$CONFIG" --add "$@"; }

# the control topics: only ADMIN writes them; everyone who runs agents reads them
acl --allow-principal "$ADMIN" --operation Create --operation Describe --operation DescribeConfigs \
    --topic "$NS." --resource-pattern-type prefixed
acl --allow-principal "$ADMIN" --operation Write --operation Read --topic "$NS.objectives"
acl --allow-principal "$ADMIN" --operation Write --operation Read --topic "$NS.objective-history"
acl --allow-principal "$ADMIN" --operation Write --topic "$NS.candidates"  # `prefstream rejudge` re-publishes sets
acl --deny-principal "$WORKER" --deny-principal "$INGEST" --deny-principal "$TAP" --operation Write \
    --topic "$NS.objectives"
acl --deny-principal "$WORKER" --deny-principal "$INGEST" --deny-principal "$TAP" --operation Write \
    --topic "$NS.objective-history"
# policies: ADMIN (`prefstream policy`) and TRAINER (`prefstream train`) publish adapters
for t in policies policy-history; do
  acl --allow-principal "$ADMIN" --allow-principal "$TRAINER" --operation Write --operation Read --topic "$NS.$t"
  acl --deny-principal "$WORKER" --deny-principal "$INGEST" --deny-principal "$TAP" --operation Write --topic "$NS.$t"
done
acl --allow-principal "$TRAINER" --operation Read --operation Describe --topic "$NS." --resource-pattern-type prefixed
acl --allow-principal "$TRAINER" --operation Read --group "$NS" --resource-pattern-type prefixed

# workers: read everything in the namespace, write the pipeline's topics, own their groups
acl --allow-principal "$WORKER" --operation Read --operation Describe --topic "$NS." --resource-pattern-type prefixed
for t in curated candidates judgments preferences preferences-shadow outcomes deadletters prompt-stats labels; do
  acl --allow-principal "$WORKER" --operation Write --topic "$NS.$t"
done
acl --allow-principal "$WORKER" --operation Read --group "$NS" --resource-pattern-type prefixed
acl --allow-principal "$WORKER" --operation Write --operation Describe --transactional-id "$NS" \
    --resource-pattern-type prefixed  # exactly_once only
acl --allow-principal "$WORKER" --operation IdempotentWrite --cluster

# ingest: prompts and feedback in, nothing else
acl --allow-principal "$INGEST" --operation Write --operation Describe --topic "$NS.prompts"
acl --allow-principal "$INGEST" --operation Write --operation Describe --topic "$NS.feedback"

# tap: reads the records it writes out, submits prompts
acl --allow-principal "$TAP" --operation Read --operation Describe --topic "$NS." --resource-pattern-type prefixed
acl --allow-principal "$TAP" --operation Write --topic "$NS.prompts"
acl --allow-principal "$TAP" --operation Read --group "$NS" --resource-pattern-type prefixed
