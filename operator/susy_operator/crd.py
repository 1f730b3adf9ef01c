"""Names shared by the CRDs, the operator and the tests: group, kinds, condition types, reasons, labels.

Pure constants: no kopf, no Kubernetes client (see STYLE.md, "a pure core with I/O at the edges").
"""
from __future__ import annotations

from typing import Final

GROUP: Final = "susy.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

TRAINING_KIND: Final = "TrainingRun"
TRAINING_PLURAL: Final = "trainingruns"
EVALUATION_KIND: Final = "EvaluationRun"
EVALUATION_PLURAL: Final = "evaluationruns"
CONTINUAL_KIND: Final = "ContinualTraining"
CONTINUAL_PLURAL: Final = "continualtrainings"

# Phases (status.phase). Pending -> Producing -> Training -> Succeeded | Failed for a TrainingRun;
# Pending -> Evaluating -> Succeeded | Failed for an EvaluationRun.
PENDING: Final = "Pending"
PRODUCING: Final = "Producing"
TRAINING: Final = "Training"
EVALUATING: Final = "Evaluating"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
TERMINAL_PHASES: Final = frozenset({SUCCEEDED, FAILED})
# While a step's Job is held, the phase says why and status.stepPhase keeps the step's own phase:
#   Suspended: spec.suspend is true (the Job is suspended, its pods removed; it resumes when cleared).
#   Queued:    the Job waits, suspended, for Kueue to admit it (spec.queueName; docs/deploy.md, Kueue).
SUSPENDED: Final = "Suspended"
QUEUED: Final = "Queued"
HELD_PHASES: Final = frozenset({SUSPENDED, QUEUED})

# Condition types (status.conditions[].type), one entry per type, Kubernetes metav1.Condition shape.
#   Produced:      the producer Job wrote the row range into Kafka and its record is in the store.
#   Trained:       the trainer Job saved a model to the store; status.modelId names it.
#   ModelResolved: the EvaluationRun's model reference resolved to one model id (status.modelId).
#   Evaluated:     every shard of the evaluator Job succeeded and the results were aggregated.
#   Succeeded:     the run reached its goal (terminal).
#   Failed:        the run stopped for good; reason and message say why (terminal).
PRODUCED: Final = "Produced"
TRAINED: Final = "Trained"
MODEL_RESOLVED: Final = "ModelResolved"
EVALUATED: Final = "Evaluated"
SUCCEEDED_CONDITION: Final = "Succeeded"
FAILED_CONDITION: Final = "Failed"
#   Suspended:     spec.suspend holds the run (True), or held it and was cleared (False, Resumed).
#   Queued:        the current step's Job waits for admission by Kueue (True), or was admitted (False).
SUSPENDED_CONDITION: Final = "Suspended"
QUEUED_CONDITION: Final = "Queued"

# Condition reasons (CamelCase, as metav1.Condition requires). Job-level ones match the
# reasons Kubernetes' Job controller uses (BackoffLimitExceeded, DeadlineExceeded, FailedIndexes).
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_JOB_CREATED: Final = "JobCreated"
REASON_JOB_RUNNING: Final = "JobRunning"
REASON_JOB_SUCCEEDED: Final = "JobSucceeded"
REASON_JOB_FAILED: Final = "JobFailed"
# A step's Job vanished (kubectl delete, a TTL shorter than our look) before its outcome was seen
# and without its output in the store: the step is failed, never silently run again.
REASON_JOB_DELETED: Final = "JobDeleted"
# While a pod cannot start, the step's condition carries the kubelet's reason (CreateContainerConfigError,
# ErrImagePull, ImagePullBackOff, Unschedulable, ...); past the grace period the run fails with it.
REASON_POD_NOT_STARTING: Final = "PodNotStarting"
REASON_WAITING: Final = "WaitingForPreviousStep"
REASON_RECORD_MISSING: Final = "StoreRecordMissing"
REASON_MODEL_NOT_FOUND: Final = "ModelNotFound"
REASON_TRAINING_RUN_NOT_FOUND: Final = "TrainingRunNotFound"
REASON_TRAINING_RUN_FAILED: Final = "TrainingRunFailed"
REASON_WAITING_FOR_TRAINING_RUN: Final = "WaitingForTrainingRun"
REASON_MODEL_RESOLVED: Final = "ModelResolved"
REASON_AGGREGATED: Final = "Aggregated"
REASON_AGGREGATION_FAILED: Final = "AggregationFailed"
REASON_STORE_UNAVAILABLE: Final = "StoreUnavailable"
# The operator's tenancy settings refuse the spec (tenancy.py): an image, an env name, a Secret,
# a claim or a dataset path the CR's author may not use. The message names the field and the setting.
REASON_NOT_ALLOWED: Final = "NotAllowed"
# Another TrainingRun, older, has not finished producing into the same topic: this one waits.
REASON_TOPIC_BUSY: Final = "TopicBusy"
REASON_SUSPENDED: Final = "SpecSuspended"
REASON_RESUMED: Final = "Resumed"
REASON_WAITING_FOR_ADMISSION: Final = "WaitingForAdmission"
REASON_ADMITTED: Final = "Admitted"
# The message of the Queued condition (and status.message) while Kueue has not admitted the Job.
QUEUED_MESSAGE: Final = "Queued (waiting for admission by Kueue)"

# ContinualTraining (continual.py): its conditions and reasons. Progressing: a generation is in
# flight (True) or the resource waits for its trigger (False, saying for what); DataLost: offsets
# the resource never read are gone (retention, a deleted topic), named in the message.
PROGRESSING_CONDITION: Final = "Progressing"
DATA_LOST_CONDITION: Final = "DataLost"
REASON_TRIGGERED: Final = "Triggered"
REASON_WAITING_FOR_DATA: Final = "WaitingForTrigger"
REASON_TOPIC_MISSING: Final = "TopicMissing"
REASON_OFFSETS_DELETED: Final = "OffsetsDeleted"
REASON_NO_LOSS: Final = "NoOffsetsLost"
REASON_TRAINING: Final = "Training"
REASON_EVALUATING: Final = "Evaluating"
REASON_EVALUATION_RUN_FAILED: Final = "EvaluationRunFailed"
REASON_EVALUATION_INCOMPLETE: Final = "EvaluationIncomplete"
REASON_FIRST_GENERATION: Final = "FirstGeneration"
REASON_CHALLENGER_WON: Final = "ChallengerWon"
REASON_CHAMPION_KEPT: Final = "ChampionKept"
REASON_ALIAS_MOVED: Final = "AliasMoved"
PROMOTED: Final = "Promoted"
REJECTED: Final = "Rejected"
GENERATION_FAILED: Final = "Failed"
EVENT_GENERATION_STARTED: Final = "GenerationStarted"
EVENT_PROMOTED: Final = "Promoted"
EVENT_REJECTED: Final = "Rejected"
EVENT_GENERATION_FAILED: Final = "GenerationFailed"
EVENT_OFFSETS_LOST: Final = "OffsetsLost"

# Event reasons (kubectl describe). One per transition.
EVENT_STARTED: Final = "Started"
EVENT_JOB_CREATED: Final = "JobCreated"
EVENT_STEP_SUCCEEDED: Final = "StepSucceeded"
EVENT_SUCCEEDED: Final = "Succeeded"
EVENT_FAILED: Final = "Failed"
EVENT_POD_NOT_STARTING: Final = "PodNotStarting"
# A running shard's or trainer's heartbeat stopped while its pod runs (progress.py).
EVENT_HEARTBEAT_STOPPED: Final = "HeartbeatStopped"
EVENT_WAITING: Final = "Waiting"
EVENT_SUSPENDED: Final = "Suspended"
EVENT_RESUMED: Final = "Resumed"
EVENT_QUEUED: Final = "Queued"
EVENT_ADMITTED: Final = "Admitted"
# Posted on the namespace's run just before the operator deletes it (spec.ttlSecondsAfterFinished).
EVENT_EXPIRED: Final = "TTLExpired"

# What a Job or pod event writes on its owner to wake the owner's reconciler at once (instead of
# at the next timer tick): "<job>:<state>" or "<pod>:<reason>". Not under "susy.dev/": kopf keeps
# its own state in annotations with that prefix (handlers.configure) and leaves every annotation
# under a storage prefix out of the object's essence (kopf/_cogs/configs/diffbase.py), so a
# change there would trigger no field handler.
ANNOTATION_OBSERVED: Final = f"events.{GROUP}/observed"

# Components (the `app.kubernetes.io/component` label and the Job name suffix).
PRODUCER: Final = "producer"
TRAINER: Final = "trainer"
EVALUATOR: Final = "evaluator"
JOB_SUFFIX: Final = {PRODUCER: "producer", TRAINER: "trainer", EVALUATOR: "eval"}

# Labels. The `app.kubernetes.io/*` set follows the Kubernetes recommended labels; the two
# `susy.dev/*` keys select a run's Jobs (`kubectl get jobs -l susy.dev/trainingrun=NAME`).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_TRAINING_RUN: Final = f"{GROUP}/trainingrun"
LABEL_EVALUATION_RUN: Final = f"{GROUP}/evaluationrun"
# On a ContinualTraining's children (TrainingRun, EvaluationRun): which resource, which generation.
LABEL_CONTINUAL_TRAINING: Final = f"{GROUP}/continualtraining"
LABEL_GENERATION: Final = f"{GROUP}/generation"
# Kueue's batch/v1 Job integration (kubernetes-sigs/kueue, read at v0.19.2 and main ff69552, 2026-08:
# pkg/controller/constants/constants.go). A Job with the queue label is managed by Kueue: created
# suspended, it is admitted by being un-suspended (pkg/controller/jobs/job/job_controller.go,
# RunWithPodSetsInfo). The priority label names a Kueue WorkloadPriorityClass; without it Kueue
# takes the workload's priority from the pod template's priorityClassName
# (pkg/controller/jobframework/reconciler.go, ExtractPriority).
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"
LABEL_KUEUE_PRIORITY: Final = "kueue.x-k8s.io/priority-class"
APP_NAME: Final = "susy-pipeline"
PART_OF: Final = "susy"
MANAGED_BY: Final = "susy-operator"

# Environment the Jobs receive (contracts.md §1 and §4).
ENV_KAFKA_BOOTSTRAP: Final = "KAFKA_BOOTSTRAP"
ENV_STORE_URI: Final = "MONGODB_URI"
ENV_DATABASE: Final = "SUSY_DATABASE"
ENV_RUN_NAME: Final = "SUSY_RUN_NAME"
# The run's namespace: the store scopes every record the Job writes or reads to it.
ENV_NAMESPACE: Final = "SUSY_NAMESPACE"
ENV_JOB_INDEX: Final = "JOB_COMPLETION_INDEX"
# The name of the dataset's credentials Secret (spec.dataset.secretName), so the pipeline's
# errors name the Secret to fix (susy_pipeline/files.py SECRET_ENV).
ENV_DATA_SECRET: Final = "SUSY_DATA_SECRET"
# The evaluator's precision (evaluate --precision, --allow-bf16), from spec.precision and spec.allowBf16.
ENV_PRECISION: Final = "SUSY_PRECISION"
ENV_ALLOW_BF16: Final = "SUSY_ALLOW_BF16"
# The pipeline pods' heartbeat interval (susy_pipeline/heartbeat.py), when the operator sets one.
ENV_HEARTBEAT_SECONDS: Final = "SUSY_HEARTBEAT_SECONDS"
# librdkafka settings for the tfio reader alone, the platform's (the chart's kafka.tfioLibrdkafka).
ENV_TFIO_LIBRDKAFKA: Final = "SUSY_TFIO_LIBRDKAFKA"
# The default key of the store URI in its Secret (contracts.md §4); the chart's store.secretKey
# replaces it for the operator and every Job (SUSY_STORE_URI_KEY).
STORE_SECRET_KEY: Final = "uri"
# Names the operator always sets; a user's spec.env cannot replace them.
# SUSY_READER too: the trainer's reader is spec.reader (the operator passes --reader, which wins
# over the variable), so setting it in spec.env would look like it works and change nothing.
RESERVED_ENV: Final = frozenset({ENV_KAFKA_BOOTSTRAP, ENV_STORE_URI, ENV_DATABASE, ENV_RUN_NAME, ENV_JOB_INDEX,
                                 ENV_NAMESPACE, "SUSY_READER", "SUSY_DATA_SECRET"})

# Exit code the pipeline uses for bad input (contracts.md §1): retrying cannot help.
EXIT_BAD_INPUT: Final = 2

MAX_NAME: Final = 63
