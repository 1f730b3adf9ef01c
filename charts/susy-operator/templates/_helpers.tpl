{{/* Chart name, cut to 63 characters. */}}
{{- define "susy-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name, cut to 63 characters; the release name alone when it contains the chart name. */}}
{{- define "susy-operator.fullname" -}}
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
{{- define "susy-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels. */}}
{{- define "susy-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "susy-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Common labels. */}}
{{- define "susy-operator.labels" -}}
helm.sh/chart: {{ include "susy-operator.chart" . }}
{{ include "susy-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: susy-streaming
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ServiceAccount's name; honours serviceAccount.create. */}}
{{- define "susy-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "susy-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespace of the release. */}}
{{- define "susy-operator.namespace" -}}
{{- .Release.Namespace }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "susy-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The pipeline image reference, passed to the operator as SUSY_PIPELINE_IMAGE. */}}
{{- define "susy-operator.pipelineImage" -}}
{{- printf "%s:%s" .Values.pipeline.image.repository (default .Chart.AppVersion .Values.pipeline.image.tag) }}
{{- end }}

{{/*
The CRDs' API group and plurals. They must match crds/ (tests/test_charts.py checks it)
and operator/susy_operator/crd.py.
*/}}
{{- define "susy-operator.apiGroup" -}}
susy.dev
{{- end }}
{{- define "susy-operator.plurals" -}}
trainingruns evaluationruns continualtrainings
{{- end }}

{{/* "Role" or "ClusterRole", after watchAllNamespaces. */}}
{{- define "susy-operator.roleKind" -}}
{{- if .Values.watchAllNamespaces }}ClusterRole{{ else }}Role{{ end }}
{{- end }}
