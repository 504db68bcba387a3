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

{{/* Marks the Services that expose an admin port, which the ServiceMonitor selects. */}}
{{- define "jobpipe.metricsLabel" -}}
jobpipe/metrics: "true"
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

{{/* A component's image and pull policy: its own keys, each falling back to image's. */}}
{{- define "jobpipe.componentImage" -}}
{{- $image := (index .root.Values .component).image }}
{{- $global := .root.Values.image }}
{{- $image.repository | default $global.repository }}:{{ $image.tag | default $global.tag | default .root.Chart.AppVersion }}
{{- end }}
{{- define "jobpipe.componentPullPolicy" -}}
{{- (index .root.Values .component).image.pullPolicy | default .root.Values.image.pullPolicy }}
{{- end }}

{{/*
A component's image, command, arguments and extra environment (under "- name: <component>");
pass (dict "root" $ "component" "consumer"). The chart's own variables come first, so extraEnv
can override them.
*/}}
{{- define "jobpipe.componentContainer" -}}
{{- $values := index .root.Values .component }}
{{- $config := printf "/etc/jobpipe/%s.toml" .component -}}
image: {{ include "jobpipe.componentImage" . }}
imagePullPolicy: {{ include "jobpipe.componentPullPolicy" . }}
{{- if $values.command }}
command:
  {{- toYaml $values.command | nindent 2 }}
{{- else }}
command: ["/usr/local/bin/jobpipe-{{ .component }}", "--config", {{ $config | quote }}]
{{- end }}
{{- with $values.args }}
args:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
{{- with $values.envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
env:
  {{- include "jobpipe.amqpEnv" . | nindent 2 }}
  # Read by any binary built on the jobpipe library, whatever its command line.
  - name: JOBPIPE_CONFIG
    value: {{ $config | quote }}
  {{- with $values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
consumer.routes, or with the worker sidecar and no routes, one route "*" to it. Each route as a
dict with its index (for the paths of its Secrets) and its values.
*/}}
{{- define "jobpipe.routes" -}}
{{- $consumer := .Values.consumer }}
{{- $routes := $consumer.routes }}
{{- if and $consumer.worker.enabled (not $routes) }}
{{- $target := printf "http://127.0.0.1:%d/" (int $consumer.worker.port) }}
{{- if eq $consumer.worker.protocol "grpc" }}{{ $target = printf "grpc://127.0.0.1:%d" (int $consumer.worker.port) }}{{ end }}
{{- $routes = list (dict "jobType" "*" "target" $target) }}
{{- end }}
{{- toJson (dict "routes" $routes) }}
{{- end }}

{{/* Where a route's Secrets are mounted: one projected volume per route, never subPath. */}}
{{- define "jobpipe.routeDir" -}}
/var/run/jobpipe/routes/{{ . }}
{{- end }}

{{/* Whether route (a dict) has a Secret to mount. */}}
{{- define "jobpipe.routeHasSecrets" -}}
{{- $tls := .tls | default dict }}
{{- if or .tokenSecret $tls.caSecret $tls.clientCertSecret }}true{{ end }}
{{- end }}

{{/* The [[routes]] tables of consumer.toml. */}}
{{- define "jobpipe.routesToml" -}}
{{- range $i, $route := (include "jobpipe.routes" . | fromJson).routes }}
{{- $dir := include "jobpipe.routeDir" $i }}
{{- $tls := $route.tls | default dict }}
{{- if $i }}{{ "\n" }}{{ end }}
[[routes]]
job_type = {{ $route.jobType | quote }}
target = {{ $route.target | quote }}
{{- with $route.concurrency }}
concurrency = {{ . | int64 }}
{{- end }}
{{- with $route.timeout }}
timeout = {{ . | quote }}
{{- end }}
{{- if $route.tokenSecret }}
token_file = "{{ $dir }}/token"
{{- end }}
{{- if or $tls.caSecret $tls.clientCertSecret $tls.serverName }}
[routes.tls]
{{- if $tls.caSecret }}
ca_file = "{{ $dir }}/ca.crt"
{{- end }}
{{- if $tls.clientCertSecret }}
cert_file = "{{ $dir }}/tls.crt"
key_file = "{{ $dir }}/tls.key"
{{- end }}
{{- with $tls.serverName }}
server_name = {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The consumer container's mounts of the routes' Secrets (under "volumeMounts:"). */}}
{{- define "jobpipe.routeVolumeMounts" -}}
{{- range $i, $route := (include "jobpipe.routes" . | fromJson).routes }}
{{- if include "jobpipe.routeHasSecrets" $route }}
- name: route-{{ $i }}
  mountPath: {{ include "jobpipe.routeDir" $i }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/*
The volumes behind them (under "volumes:"): each route's Secrets projected into one directory
under fixed names (token, ca.crt, tls.crt, tls.key). kubelet updates projected Secrets in place,
so a rotated token or certificate reaches the files without a restart.
*/}}
{{- define "jobpipe.routeVolumes" -}}
{{- range $i, $route := (include "jobpipe.routes" . | fromJson).routes }}
{{- if include "jobpipe.routeHasSecrets" $route }}
{{- $tls := $route.tls | default dict }}
- name: route-{{ $i }}
  projected:
    defaultMode: 0440
    sources:
      {{- with $route.tokenSecret }}
      - secret:
          name: {{ .name }}
          items:
            - key: {{ .key | default "token" }}
              path: token
      {{- end }}
      {{- with $tls.caSecret }}
      - secret:
          name: {{ .name }}
          items:
            - key: {{ .key | default "ca.crt" }}
              path: ca.crt
      {{- end }}
      {{- with $tls.clientCertSecret }}
      - secret:
          name: {{ . }}
          items:
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The broker connection of one component; pass (dict "root" $ "component" "producer"). Host and
port come from the shared Secret (the port is rabbitmq.tls.port with TLS), credentials from the
component's own Secret if it has one: never in the ConfigMap. The URL is assembled by Kubernetes
($(VAR) expansion); jobpipe overrides its user info with JOBPIPE__AMQP__USERNAME / PASSWORD.
*/}}
{{- define "jobpipe.amqpEnv" -}}
{{- $rabbitmq := .root.Values.rabbitmq }}
{{- $secret := include "jobpipe.brokerSecret" . }}
{{- /* EXTERNAL login ignores them, so a certificate-only Secret need not hold them. */}}
{{- $optional := eq $rabbitmq.tls.login "certificate" -}}
- name: AMQP_HOST
  valueFrom:
    secretKeyRef:
      name: {{ $rabbitmq.existingSecret }}
      key: {{ $rabbitmq.hostKey }}
{{- if $rabbitmq.tls.enabled }}
- name: JOBPIPE__AMQP__URL
  value: "amqps://$(AMQP_HOST):{{ $rabbitmq.tls.port }}/{{ $rabbitmq.vhost | urlquery }}"
{{- else }}
- name: AMQP_PORT
  valueFrom:
    secretKeyRef:
      name: {{ $rabbitmq.existingSecret }}
      key: {{ $rabbitmq.portKey }}
- name: JOBPIPE__AMQP__URL
  value: "amqp://$(AMQP_HOST):$(AMQP_PORT)/{{ $rabbitmq.vhost | urlquery }}"
{{- end }}
- name: JOBPIPE__AMQP__USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $rabbitmq.usernameKey }}
      {{- if $optional }}
      optional: true
      {{- end }}
- name: JOBPIPE__AMQP__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $rabbitmq.passwordKey }}
      {{- if $optional }}
      optional: true
      {{- end }}
{{- end }}

{{/* The Secret with a component's broker credentials: its own, or the shared one. */}}
{{- define "jobpipe.brokerSecret" -}}
{{- (index .root.Values.rabbitmq.users .component).existingSecret | default .root.Values.rabbitmq.existingSecret }}
{{- end }}

{{/* The kubernetes.io/tls Secret a component presents to the broker; empty: none. */}}
{{- define "jobpipe.brokerClientCert" -}}
{{- (index .root.Values.rabbitmq.users .component).clientCertSecret | default .root.Values.rabbitmq.tls.clientCertSecret }}
{{- end }}

{{/*
Where the broker's TLS files are mounted. Whole Secrets as directories, never subPath: kubelet
updates those in place, and jobpipe reads the files at each connection.
*/}}
{{- define "jobpipe.amqpCaFile" -}}
/etc/jobpipe/amqp-ca/{{ .Values.rabbitmq.tls.caKey }}
{{- end }}
{{- define "jobpipe.amqpClientDir" -}}
/etc/jobpipe/amqp-client
{{- end }}

{{/* The [amqp] and [amqp.tls] sections; nothing without TLS (the service refuses them then). */}}
{{- define "jobpipe.amqpToml" -}}
{{- $tls := .root.Values.rabbitmq.tls }}
{{- if $tls.enabled }}
[amqp]
login = {{ $tls.login | quote }}

[amqp.tls]
{{- if $tls.caSecret }}
ca_file = {{ include "jobpipe.amqpCaFile" .root | quote }}
{{- end }}
{{- if include "jobpipe.brokerClientCert" . }}
cert_file = "{{ include "jobpipe.amqpClientDir" .root }}/tls.crt"
key_file = "{{ include "jobpipe.amqpClientDir" .root }}/tls.key"
{{- end }}
{{- if $tls.serverName }}
server_name = {{ $tls.serverName | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The same settings as environment variables, for the topology Job (it has no ConfigMap). */}}
{{- define "jobpipe.amqpTlsEnv" -}}
{{- $tls := .root.Values.rabbitmq.tls }}
{{- if $tls.enabled }}
- name: JOBPIPE__AMQP__LOGIN
  value: {{ $tls.login | quote }}
{{- if $tls.caSecret }}
- name: JOBPIPE__AMQP__TLS__CA_FILE
  value: {{ include "jobpipe.amqpCaFile" .root | quote }}
{{- end }}
{{- if include "jobpipe.brokerClientCert" . }}
- name: JOBPIPE__AMQP__TLS__CERT_FILE
  value: "{{ include "jobpipe.amqpClientDir" .root }}/tls.crt"
- name: JOBPIPE__AMQP__TLS__KEY_FILE
  value: "{{ include "jobpipe.amqpClientDir" .root }}/tls.key"
{{- end }}
{{- if $tls.serverName }}
- name: JOBPIPE__AMQP__TLS__SERVER_NAME
  value: {{ $tls.serverName | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Mounts of a component's broker TLS Secrets (under "volumeMounts:"). */}}
{{- define "jobpipe.amqpTlsVolumeMounts" -}}
{{- if .root.Values.rabbitmq.tls.enabled }}
{{- if .root.Values.rabbitmq.tls.caSecret }}
- name: amqp-ca
  mountPath: /etc/jobpipe/amqp-ca
  readOnly: true
{{- end }}
{{- if include "jobpipe.brokerClientCert" . }}
- name: amqp-client
  mountPath: {{ include "jobpipe.amqpClientDir" .root }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* The volumes behind them (under "volumes:"). */}}
{{- define "jobpipe.amqpTlsVolumes" -}}
{{- if .root.Values.rabbitmq.tls.enabled }}
{{- if .root.Values.rabbitmq.tls.caSecret }}
- name: amqp-ca
  secret:
    secretName: {{ .root.Values.rabbitmq.tls.caSecret }}
    defaultMode: 0440
{{- end }}
{{- with include "jobpipe.brokerClientCert" . }}
- name: amqp-client
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{/* The [topology] section both services share. */}}
{{- define "jobpipe.topologyToml" -}}
[topology]
prefix = {{ .Values.jobpipe.prefix | quote }}
queues = [{{ range $i, $q := .Values.jobpipe.queues }}{{ if $i }}, {{ end }}{{ $q | quote }}{{ end }}]
{{- /* Quorum queues only: the services' classic type is for benchmarks (no delivery limit,
at-most-once dead-lettering), so the chart does not offer it. */}}
queue_type = "quorum"
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

{{/*
Settings that contradict each other fail the render, naming the key: a security setting must
never be dropped silently. Included by the ConfigMap, which every installation renders.
*/}}
{{- define "jobpipe.validate" -}}
{{- $rabbitmq := .Values.rabbitmq }}
{{- $producer := .Values.producer }}
{{- if not $rabbitmq.tls.enabled }}
{{- $clientCerts := list $rabbitmq.tls.clientCertSecret }}
{{- range $rabbitmq.users }}{{ $clientCerts = append $clientCerts .clientCertSecret }}{{ end }}
{{- if eq $rabbitmq.tls.login "certificate" }}
{{- fail "rabbitmq.tls.login=certificate needs rabbitmq.tls.enabled=true: the broker reads the user from the TLS client certificate" }}
{{- else if or $rabbitmq.tls.caSecret (compact $clientCerts) }}
{{- fail "rabbitmq.tls.caSecret and the client certificate Secrets (rabbitmq.tls.clientCertSecret, rabbitmq.users.*.clientCertSecret) need rabbitmq.tls.enabled=true (amqps://)" }}
{{- end }}
{{- end }}
{{- if eq $rabbitmq.tls.login "certificate" }}
{{- $components := list }}
{{- if eq .Values.topology.declareBy "job" }}{{ $components = append $components "topology" }}{{ end }}
{{- if $producer.enabled }}{{ $components = append $components "producer" }}{{ end }}
{{- if .Values.consumer.enabled }}{{ $components = append $components "consumer" }}{{ end }}
{{- range $components }}
{{- if not (include "jobpipe.brokerClientCert" (dict "root" $ "component" .)) }}
{{- fail (printf "rabbitmq.tls.login=certificate needs a client certificate for the %s: set rabbitmq.tls.clientCertSecret (or rabbitmq.users.%s.clientCertSecret), a kubernetes.io/tls Secret" . .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $producer.tls.enabled }}
{{- if not $producer.tls.secretName }}
{{- fail "producer.tls.enabled=true needs producer.tls.secretName: a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt), or the one producer.tls.certManager issues" }}
{{- end }}
{{- if and $producer.tls.certManager.enabled (not $producer.tls.certManager.issuerRef.name) }}
{{- fail "producer.tls.certManager.enabled=true needs producer.tls.certManager.issuerRef.name" }}
{{- end }}
{{- else if or $producer.tls.clientCaSecret $producer.tls.certManager.enabled }}
{{- fail "producer.tls.clientCaSecret and producer.tls.certManager need producer.tls.enabled=true" }}
{{- end }}
{{- if and $producer.auth.enabled (not $producer.auth.callersSecret) }}
{{- fail "producer.auth.enabled=true needs producer.auth.callersSecret: a Secret with the key callers.toml" }}
{{- end }}
{{- $worker := .Values.consumer.worker }}
{{- if and $worker.enabled (not $worker.image.repository) }}
{{- fail "consumer.worker.enabled=true needs consumer.worker.image.repository: the worker's image" }}
{{- end }}
{{- include "jobpipe.validateAutoscaling" . }}
{{- $jobTypes := dict }}
{{- range $i, $route := .Values.consumer.routes }}
{{- if hasKey $jobTypes $route.jobType }}
{{- fail (printf "consumer.routes[%d].jobType %q is routed twice (consumer.routes[%v] too)" $i $route.jobType (get $jobTypes $route.jobType)) }}
{{- end }}
{{- $_ := set $jobTypes $route.jobType $i }}
{{- /* TLS settings on a plain-text target would be ignored: a security setting never is. */}}
{{- if and $route.tls (not (regexMatch "^(https|grpcs)://" $route.target)) }}
{{- fail (printf "consumer.routes[%d].tls needs an https:// or grpcs:// target, not %q" $i $route.target) }}
{{- end }}
{{- if and $route.tls $route.tls.serverName (not (hasPrefix "grpcs://" $route.target)) }}
{{- fail (printf "consumer.routes[%d].tls.serverName applies to grpcs:// targets only: put the certificate's name in the https:// URL" $i) }}
{{- end }}
{{- if and (not (contains "://" $route.target)) (or $route.tokenSecret $route.timeout) }}
{{- fail (printf "consumer.routes[%d].tokenSecret and .timeout apply to http(s) and grpc(s) targets, not to the handler %q" $i $route.target) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fails the render unless the cluster serves `api`, naming the value that needs it and the one to
turn off: without the check, a missing CRD surfaces as an unhelpful "no matches for kind" halfway
through the install. Pass (dict "root" $ "api" "keda.sh/v1alpha1" "what" "KEDA" "value"
"consumer.autoscaling.keda.enabled").
*/}}
{{- define "jobpipe.requireApi" -}}
{{- if not (.root.Capabilities.APIVersions.Has .api) }}
{{- fail (printf "%s=true needs %s, but the cluster serves no %s: install it first, or set %s=false (with helm template, pass --api-versions %s)" .value .what .api .value .api) }}
{{- end }}
{{- end }}

{{/*
The consumer's autoscaling: one autoscaler per Deployment, fed by gauges that exist. Part of
jobpipe.validate.
*/}}
{{- define "jobpipe.validateAutoscaling" -}}
{{- $consumer := .Values.consumer }}
{{- $hpa := $consumer.autoscaling.hpa }}
{{- $keda := $consumer.autoscaling.keda }}
{{- if and $consumer.enabled (or $hpa.enabled $keda.enabled) }}
{{- if and $hpa.enabled $keda.enabled }}
{{- fail "consumer.autoscaling.hpa (an HPA) and consumer.autoscaling.keda (a KEDA ScaledObject, which makes an HPA of its own) must not both scale the consumer Deployment: enable one" }}
{{- end }}
{{- /* Zero in any unit the schema allows ("0s", "0ms 0s", ...). */}}
{{- if regexMatch "^(0+[a-z]+ ?)+$" (toString .Values.jobpipe.queuePollInterval) }}
{{- fail "consumer.autoscaling needs the queue gauges it scales on: set jobpipe.queuePollInterval above 0s" }}
{{- end }}
{{- /* The default selectors match the labels the chart's ServiceMonitor gives the series:
without it (another scrape), say which labels to match, or the queries see nothing and the
consumers never scale up. */}}
{{- if and $hpa.enabled (not .Values.serviceMonitor.enabled) (not $hpa.metric.matchLabels) }}
{{- fail "consumer.autoscaling.hpa.enabled=true without serviceMonitor.enabled: set consumer.autoscaling.hpa.metric.matchLabels to the labels your scrape gives jobpipe_consumer_desired_replicas, or enable serviceMonitor" }}
{{- end }}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail "consumer.autoscaling.hpa.minReplicas must not exceed consumer.autoscaling.hpa.maxReplicas" }}
{{- end }}
{{- if $keda.enabled }}
{{- if not $keda.prometheus.serverAddress }}
{{- fail "consumer.autoscaling.keda.enabled=true needs consumer.autoscaling.keda.prometheus.serverAddress: the Prometheus that scrapes jobpipe's metrics (e.g. http://prometheus-operated.monitoring:9090)" }}
{{- end }}
{{- if and (not .Values.serviceMonitor.enabled) (not $keda.prometheus.selector) }}
{{- fail "consumer.autoscaling.keda.enabled=true without serviceMonitor.enabled: set consumer.autoscaling.keda.prometheus.selector to the labels your scrape gives jobpipe's series, or enable serviceMonitor" }}
{{- end }}
{{- if gt (int $keda.minReplicaCount) (int $keda.maxReplicaCount) }}
{{- fail "consumer.autoscaling.keda.minReplicaCount must not exceed consumer.autoscaling.keda.maxReplicaCount" }}
{{- end }}
{{- /* A replica whose every slot is busy would count as less than one, and be scaled in. */}}
{{- if gt (int $keda.jobsPerReplica) (int $consumer.concurrency) }}
{{- fail (printf "consumer.autoscaling.keda.jobsPerReplica (%d) must not exceed consumer.concurrency (%d): a consumer running a job in every slot would count as less than one replica and be scaled in" (int $keda.jobsPerReplica) (int $consumer.concurrency)) }}
{{- end }}
{{- /* At zero consumers, only the producers export the gauges that wake them up. */}}
{{- if and (eq (int $keda.minReplicaCount) 0) (not .Values.producer.enabled) }}
{{- fail "consumer.autoscaling.keda.minReplicaCount=0 needs producer.enabled=true: with no consumer running, the producers' queue gauges are what wakes the consumers up" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
