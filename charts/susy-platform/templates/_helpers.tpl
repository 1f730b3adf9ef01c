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
