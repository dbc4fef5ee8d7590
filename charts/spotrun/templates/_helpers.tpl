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
{{- /* The operator's rights in each namespace it watches (in its ClusterRole when it watches all). */ -}}
{{- define "spotrun.namespacedRules" -}}
# Watch TaskRuns; patch: kopf's finalizer and annotations; delete: ttlSecondsAfterFinished.
- apiGroups: [spotrun.dev]
  resources: [taskruns]
  verbs: [get, list, watch, patch, update, delete]
# The operator alone writes status.
- apiGroups: [spotrun.dev]
  resources: [taskruns/status]
  verbs: [get, patch, update]
# One pod per attempt: create, watch, annotate (notices) and delete, release the accounting finalizer.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete, patch]
# voluntary Checkpoint: a PodDisruptionBudget per TaskRun keeps a drain from evicting its pod.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch, delete]  # get: adopt only the TaskRun's own; patch: eviction windows
# spec.replicas > 1: a headless Service per gang gives its pods DNS names (the TaskRun owns it;
# get: whose one of that name is, when it exists).
- apiGroups: [""]
  resources: [services]
  verbs: [create, get]
# An Event on every TaskRun transition.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
