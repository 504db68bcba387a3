{{/*
Where and how a pod the chart creates is scheduled, under "spec:"; pass (dict "root" $ "values"
<the component's values> "component" <its app.kubernetes.io/component>). The components are the
producer, the consumer, the topology Job (topology.job) and the `helm test` pod (tests). Each
field is the component's own value when it is set, else the global one. A topology spread
constraint without a labelSelector selects the component's own pods: producers and consumers are
spread each among themselves, never against each other.
*/}}
{{- define "jobpipe.podScheduling" -}}
{{- $global := .root.Values }}
{{- $own := .values }}
{{- with $own.imagePullSecrets | default $global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $own.priorityClassName | default $global.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $own.nodeSelector | default $global.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $own.affinity | default $global.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $own.tolerations | default $global.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $own.topologySpreadConstraints | default $global.topologySpreadConstraints }}
{{- $labels := include "jobpipe.selectorLabels" (dict "root" $.root "component" $.component) | fromYaml }}
topologySpreadConstraints:
  {{- range . }}
  {{- $constraint := . }}
  {{- if not (hasKey . "labelSelector") }}
  {{- $constraint = merge (dict "labelSelector" (dict "matchLabels" $labels)) . }}
  {{- end }}
  - {{- toYaml $constraint | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
A pod's own annotations (under "annotations:"): the global podAnnotations with the component's
merged over them, the component's winning; pass the same dict as to jobpipe.podScheduling.
*/}}
{{- define "jobpipe.podAnnotations" -}}
{{- with merge (dict) (.values.podAnnotations | default dict) .root.Values.podAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end }}
