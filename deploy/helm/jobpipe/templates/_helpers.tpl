{{/* The chart's name. */}}
{{- define "jobpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name. */}}
{{- define "jobpipe.fullname" -}}
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

{{- define "jobpipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object; pass (dict "root" $ "component" "producer"). */}}
{{- define "jobpipe.labels" -}}
helm.sh/chart: {{ include "jobpipe.chart" .root }}
{{ include "jobpipe.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: jobpipe
{{- end }}

{{- define "jobpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobpipe.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "jobpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jobpipe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jobpipe.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The broker connection: credentials from the existing Secret, never in the ConfigMap. The URL is
assembled by Kubernetes from the host and port keys ($(VAR) expansion); jobpipe overrides its
user info with JOBPIPE__AMQP__USERNAME / PASSWORD.
*/}}
{{- define "jobpipe.amqpEnv" -}}
- name: AMQP_HOST
  valueFrom:
    secretKeyRef:
      name: {{ .Values.rabbitmq.existingSecret }}
      key: {{ .Values.rabbitmq.hostKey }}
- name: AMQP_PORT
  valueFrom:
    secretKeyRef:
      name: {{ .Values.rabbitmq.existingSecret }}
      key: {{ .Values.rabbitmq.portKey }}
- name: JOBPIPE__AMQP__URL
  value: "amqp://$(AMQP_HOST):$(AMQP_PORT)/{{ .Values.rabbitmq.vhost | urlquery }}"
- name: JOBPIPE__AMQP__USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.rabbitmq.existingSecret }}
      key: {{ .Values.rabbitmq.usernameKey }}
- name: JOBPIPE__AMQP__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.rabbitmq.existingSecret }}
      key: {{ .Values.rabbitmq.passwordKey }}
{{- end }}

{{/* The [topology] section both services share. */}}
{{- define "jobpipe.topologyToml" -}}
[topology]
prefix = {{ .Values.jobpipe.prefix | quote }}
queues = [{{ range $i, $q := .Values.jobpipe.queues }}{{ if $i }}, {{ end }}{{ $q | quote }}{{ end }}]
queue_type = {{ .Values.jobpipe.queueType | quote }}
delivery_limit = {{ .Values.jobpipe.deliveryLimit | int64 }}
max_length = {{ .Values.jobpipe.maxLength | int64 }}
declare = {{ eq .Values.topology.declareBy "services" }}
{{- end }}

{{/* The [log], [telemetry] and [metrics] sections both services share. */}}
{{- define "jobpipe.commonToml" -}}
[log]
level = {{ .Values.jobpipe.logLevel | quote }}
format = "json"

[telemetry]
otlp_endpoint = {{ .Values.jobpipe.otlpEndpoint | quote }}

[metrics]
queue_poll_interval = {{ .Values.jobpipe.queuePollInterval | quote }}
{{- end }}

{{/* The consumer's grace period, and its pod's: the pod gets 15 s more to exit cleanly. */}}
{{- define "jobpipe.consumer.terminationGracePeriodSeconds" -}}
{{ add .Values.consumer.shutdownGracePeriodSeconds 15 }}
{{- end }}

{{/* The producer's pod grace period: the preStop delay, the drain, and 5 s to exit. */}}
{{- define "jobpipe.producer.terminationGracePeriodSeconds" -}}
{{ add .Values.producer.drainDelaySeconds .Values.producer.shutdownGracePeriodSeconds 5 }}
{{- end }}
