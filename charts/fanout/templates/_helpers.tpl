{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "fanout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. When the release name already contains the chart name it
is used as it is, so `helm install fanout ./charts/fanout` gives "fanout", not "fanout-fanout".
*/}}
{{- define "fanout.fullname" -}}
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

{{- define "fanout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "fanout.labels" -}}
{{ include "fanout.commonLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{/* The labels every object shares, whatever its component. */}}
{{- define "fanout.commonLabels" -}}
helm.sh/chart: {{ include "fanout.chart" . }}
app.kubernetes.io/name: {{ include "fanout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fanout
{{- end }}

{{/* Labels that select the controller pods; never change them on upgrade (selectors are immutable). */}}
{{- define "fanout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fanout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "fanout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fanout.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The controller image: repository@digest, or repository:tag with the tag defaulting to appVersion. */}}
{{- define "fanout.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Image the controller gives proxies whose FanoutGroup names none. */}}
{{- define "fanout.proxyImage" -}}
{{- default (include "fanout.image" .) .Values.proxyImage }}
{{- end }}

{{/* Namespaces that get the proxy NetworkPolicy. */}}
{{- define "fanout.networkPolicyNamespaces" -}}
{{- if .Values.networkPolicy.namespaces }}
{{- toYaml .Values.networkPolicy.namespaces }}
{{- else }}
{{- toYaml (list (default .Release.Namespace .Values.watchNamespace)) }}
{{- end }}
{{- end }}
