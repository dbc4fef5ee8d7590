{{- define "spotrun.name" -}}spotrun-operator{{- end -}}
{{- define "spotrun.labels" -}}
app.kubernetes.io/name: spotrun-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "spotrun.selector" -}}
app.kubernetes.io/name: spotrun-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
