{{/* Chart name, cut to 63 characters. */}}
{{- define "susy-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, cut to 63 characters (some Kubernetes name fields are limited
to that). The release name alone when it already contains the chart name.
*/}}
{{- define "susy-platform.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "susy-platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Component names (also the headless Service names). */}}
{{- define "susy-platform.kafka.fullname" -}}
{{- printf "%s-kafka" (include "susy-platform.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "susy-platform.zookeeper.fullname" -}}
{{- printf "%s-zookeeper" (include "susy-platform.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "susy-platform.mongodb.fullname" -}}
{{- printf "%s-mongodb" (include "susy-platform.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels; pass a dict with "ctx" (the root context) and "component". */}}
{{- define "susy-platform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "susy-platform.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Common labels; pass a dict with "ctx" and "component". */}}
{{- define "susy-platform.labels" -}}
helm.sh/chart: {{ include "susy-platform.chart" .ctx }}
{{ include "susy-platform.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: susy-streaming
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/* "repository:tag" of an image values block. */}}
{{- define "susy-platform.image" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{/* Namespace of the release. */}}
{{- define "susy-platform.namespace" -}}
{{- .Release.Namespace }}
{{- end }}

{{/* Name of the Secret holding the MongoDB credentials and the application URI. */}}
{{- define "susy-platform.mongodb.secretName" -}}
{{- if .Values.mongodb.auth.existingSecret }}
{{- .Values.mongodb.auth.existingSecret }}
{{- else }}
{{- include "susy-platform.mongodb.fullname" . }}
{{- end }}
{{- end }}

{{/* Kafka bootstrap address for clients inside the cluster. */}}
{{- define "susy-platform.kafka.bootstrap" -}}
{{- printf "%s.%s.svc.%s:%d" (include "susy-platform.kafka.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.kafka.port) }}
{{- end }}

{{/* Short Kafka bootstrap address, valid inside the release namespace. */}}
{{- define "susy-platform.kafka.bootstrapShort" -}}
{{- printf "%s:%d" (include "susy-platform.kafka.fullname" .) (int .Values.kafka.port) }}
{{- end }}

{{/* ZooKeeper connect string listing every ensemble member. */}}
{{- define "susy-platform.zookeeper.connect" -}}
{{- $zk := include "susy-platform.zookeeper.fullname" . }}
{{- $hosts := list }}
{{- range $i := until (int .Values.zookeeper.replicas) }}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc.%s:2181" $zk $i $zk $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- join "," $hosts }}
{{- end }}

{{/* KRaft controller quorum voters: id@host:port for every broker. */}}
{{- define "susy-platform.kafka.quorumVoters" -}}
{{- $k := include "susy-platform.kafka.fullname" . }}
{{- $voters := list }}
{{- range $i := until (int .Values.kafka.replicas) }}
{{- $voters = append $voters (printf "%d@%s-%d.%s.%s.svc.%s:%d" $i $k $i $k $.Release.Namespace $.Values.clusterDomain (int $.Values.kafka.controllerPort)) }}
{{- end }}
{{- join "," $voters }}
{{- end }}

{{/* Replication factor for internal topics: min(replicas, 3). */}}
{{- define "susy-platform.kafka.internalReplication" -}}
{{- min (int .Values.kafka.replicas) 3 }}
{{- end }}

{{/* Pod security context: the chart-wide one plus the component's user. */}}
{{- define "susy-platform.podSecurityContext" -}}
{{- $uid := int .uid }}
{{- $sc := merge (dict "runAsUser" $uid "runAsGroup" $uid "fsGroup" $uid "fsGroupChangePolicy" "OnRootMismatch") (deepCopy .ctx.Values.podSecurityContext) }}
{{- toYaml $sc }}
{{- end }}

{{/* Container security context; pass a dict with "ctx" and "readOnlyRootFilesystem". */}}
{{- define "susy-platform.containerSecurityContext" -}}
{{- $sc := merge (dict "readOnlyRootFilesystem" .readOnlyRootFilesystem "runAsNonRoot" true) (deepCopy .ctx.Values.containerSecurityContext) }}
{{- toYaml $sc }}
{{- end }}

{{/*
NetworkPolicy peers that may reach Kafka and MongoDB: the pipeline's Job pods and the operator's
pods (in this namespace, and in networkPolicy.clientNamespaces), and this release's pods of the
given components (the topic Job, the helm test pods). Pass a dict with "ctx" and "components".
*/}}
{{- define "susy-platform.networkPolicy.clients" -}}
{{- $ := .ctx }}
{{- $np := $.Values.networkPolicy }}
{{- range $labels := list $np.pipelinePodLabels $np.operatorPodLabels }}
- podSelector:
    matchLabels:
      {{- toYaml $labels | nindent 6 }}
{{- if $np.clientNamespaces }}
- namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values:
          {{- toYaml $np.clientNamespaces | nindent 10 }}
  podSelector:
    matchLabels:
      {{- toYaml $labels | nindent 6 }}
{{- end }}
{{- end }}
{{- range $component := .components }}
- podSelector:
    matchLabels:
      {{- include "susy-platform.selectorLabels" (dict "ctx" $ "component" $component) | nindent 6 }}
{{- end }}
{{- end }}

{{/*
Where the pipeline's pods find a TLS MongoDB's CA: the susy-operator chart mounts its
store.caSecretName there in the operator and every Job (operator/susy_operator/builders.py
STORE_CA_PATH, charts/susy-operator/templates/deployment.yaml), so the URI names this file.
*/}}
{{- define "susy-platform.mongodb.clientCAFile" -}}
/etc/susy/store-ca/ca.crt
{{- end }}

{{/*
kafka.extraEnv as broker properties, one "name=value" a line: a KAFKA_* name not in the image
wrapper's ExcludeServerPropsEnv becomes a property by KafkaDockerWrapper.getServerConfigsFromEnv's
rule (drop "KAFKA_", lower case, "_" -> ".", "..." -> "-", ".." -> "_"; apache/kafka 3.9
core/src/main/scala/kafka/docker/KafkaDockerWrapper.scala), here at render time, for the
server.properties the chart writes itself.
*/}}
{{- define "susy-platform.kafka.extraProperties" -}}
{{- $notProps := list "KAFKA_VERSION" "KAFKA_HEAP_OPTS" "KAFKA_LOG4J_OPTS" "KAFKA_OPTS" "KAFKA_JMX_OPTS" "KAFKA_JVM_PERFORMANCE_OPTS" "KAFKA_GC_LOG_OPTS" "KAFKA_LOG4J_ROOT_LOGLEVEL" "KAFKA_LOG4J_LOGGERS" "KAFKA_TOOLS_LOG4J_LOGLEVEL" "KAFKA_JMX_HOSTNAME" }}
{{- $lines := list }}
{{- range $name, $value := .Values.kafka.extraEnv }}
{{- if and (hasPrefix "KAFKA_" $name) (not (has $name $notProps)) }}
{{- $lines = append $lines (printf "%s=%v" ($name | replace "KAFKA_" "" | lower | replace "_" "." | replace "..." "-" | replace ".." "_") $value) }}
{{- end }}
{{- end }}
{{- join "\n" $lines }}
{{- end }}

{{/*
Shell lines that write a Kafka PEM keystore (KIP-651) to .out from the kafka.tls Secret mounted at
/etc/kafka/tls: the private key (PKCS#8), then the certificate chain, in one file. Kafka's PemParser
needs whitespace after each "-----END ...-----" line (DefaultSslEngineFactory.java, PemParser), so
a newline goes between the two, in case tls.key has no final one.
*/}}
{{- define "susy-platform.kafka.pemKeystore" -}}
# Kafka reads a PEM keystore as one file: the private key, then the certificate chain.
{ cat /etc/kafka/tls/tls.key; echo; cat /etc/kafka/tls/tls.crt; } > "{{ .out }}"
{{- end }}

{{/*
The kafka.sasl client user from its Secret, by secretKeyRef only. Not KAFKA_*: nothing here may
become a broker property.
*/}}
{{- define "susy-platform.kafka.saslUserEnv" -}}
- name: SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.secretName | quote }}
      key: "username"
- name: SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.secretName | quote }}
      key: "password"
{{- end }}

{{/*
Shell lines that refuse a kafka.sasl user the SCRAM syntax cannot carry: kafka-storage.sh's
--add-scram and kafka-configs.sh's --add-config split "[name=...,password=...]" at "," and "="
(metadata/src/main/java/org/apache/kafka/metadata/storage/ScramParser.java), and their errors
quote the argument, password included. The message names the Secret, never the value.
*/}}
{{- define "susy-platform.kafka.saslUserCheck" -}}
[[ $SASL_USERNAME =~ ^[A-Za-z0-9._-]+$ ]] || { echo "kafka: the user name in the Secret {{ .Values.kafka.sasl.secretName }} (kafka.sasl.secretName) must be letters, digits, '.', '_' or '-'" >&2; exit 1; }
[[ $SASL_PASSWORD =~ ^[A-Za-z0-9]+$ ]] || { echo "kafka: the password in the Secret {{ .Values.kafka.sasl.secretName }} (kafka.sasl.secretName) must be letters and digits" >&2; exit 1; }
{{- end }}

{{/*
Shell lines that write the kafka.sasl user's SCRAM credential for `kafka-configs.sh --alter
--entity-type users --add-config-file "$scram"` into .file, readable by this container's user
alone (umask 077), and set $scram to its path. printf is bash's builtin: the password never is an
argument of a process, where every process of the node could read it (/proc/PID/cmdline). The
line is a Java properties entry, `MECHANISM=password=...`: kafka-configs.sh loads the file with
Utils.loadProps and matches each SCRAM value against "(?:iterations=...,)?password=(.*)", with
--zookeeper and --bootstrap-server alike (apache/kafka 3.9 core/src/main/scala/kafka/admin/
ConfigCommand.scala: parseConfigsToBeAdded, preProcessScramCredentials,
alterUserScramCredentialConfigs). Delete the file once used. Pass a dict with "ctx" and "file".
*/}}
{{- define "susy-platform.kafka.scramFile" -}}
{{- include "susy-platform.kafka.saslUserCheck" .ctx }}
scram={{ .file | quote }}
( umask 077; printf '%s=password=%s\n' {{ .ctx.Values.kafka.sasl.mechanism | quote }} "$SASL_PASSWORD" > "$scram" )
{{- end }}

{{/*
susy-platform.kafka.authorizer (documentation only). With kafka.sasl the brokers run an authorizer:
AclAuthorizer in ZooKeeper mode, StandardAuthorizer in KRaft mode. Without one, Kafka allows every
request (core/src/main/scala/kafka/server/AuthHelper.scala: `authorizer.forall`), so the SCRAM
client user could change any user's credentials: AlterUserScramCredentials asks only for ALTER on
the cluster (ControllerApis.handleAlterUserScramCredentials in KRaft, KafkaApis.
handleAlterUserScramCredentialsRequest in ZooKeeper mode). super.users=User:ANONYMOUS: the brokers
and KRaft controllers talk to each other on the plaintext listeners, where every connection is
User:ANONYMOUS (clients/.../authenticator/DefaultKafkaPrincipalBuilder.java; the TLS listener too,
without client certificates), and so does the topic Job; the NetworkPolicy
(kafka-networkpolicy.yaml) keeps every other pod off those ports. allow.everyone.if.no.acl.found
keeps its default, false (StandardAuthorizer.getDefaultResult; AclAuthorizer), so the client user
may do only what the topic Job grants it: topics' Write, Create, Describe and Read, and Read on
consumer groups (kafka-acls.sh --producer, --consumer), nothing on the cluster.
*/}}
