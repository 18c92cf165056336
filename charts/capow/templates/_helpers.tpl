{{/* Name of the chart, overridable with nameOverride. */}}
{{- define "capow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object's name: the release name, with the chart name unless it contains it. */}}
{{- define "capow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "capow.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "capow.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels of every object; the provider label is the one clusterctl and CAPI look for. */}}
{{- define "capow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "capow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
cluster.x-k8s.io/provider: infrastructure-openstack-workers
{{- end }}

{{/* Selector of the manager pods. */}}
{{- define "capow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end }}

{{- define "capow.serviceAccountName" -}}
{{ include "capow.fullname" . }}-manager
{{- end }}

{{- define "capow.autoscalerServiceName" -}}
{{ include "capow.fullname" . }}-autoscaler
{{- end }}
