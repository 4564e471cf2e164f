{{/*
What the operator may do: least privilege, grouped by purpose. Every rule is listed with
its reason in the chart README; tests/chart checks that the two agree and that the rules
equal manifests/rbac.yaml.
*/}}
{{- define "nas-bohb.rules" -}}
# Searches: watch them, and write their status (phase, trials, incumbent). The patch
# on jointsearches/status is also what the operator hands on, one search at a time,
# to each search's trainer Role (RBAC only lets it grant what it holds).
- apiGroups: [nas-bohb.io]
  resources: [jointsearches]
  verbs: [get, list, watch]
- apiGroups: [nas-bohb.io]
  resources: [jointsearches/status]
  verbs: [get, patch]
# Owner references with blockOwnerDeletion on the objects a search owns need this
# where the OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: [nas-bohb.io]
  resources: [jointsearches/finalizers]
  verbs: [update]
# Trials: one Job per trial; deleted when the result is in or the search ends.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# A trial's Job that ended without a result in the status: the pod's termination
# message (the trainer's result, when its status write did not get through), else why
# it failed: exit code and reason (read only, one list per such Job).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# The search's ledger: append-only ConfigMaps owned by the search (removed with it by
# the garbage collector, so no delete).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, create, update]
# Trainer access, per search: a ServiceAccount for its pods and a Role + RoleBinding
# that allow patch on that one search's status (resourceNames), nothing else.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
# Events on searches: trial started/finished/failed, new incumbent, invalid specs.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
Cluster-scoped reads that kopf itself needs (its runtime "scanning"). Without them kopf
retries for about a minute at start-up and then ignores CRDs installed after it started.
*/}}
{{- define "nas-bohb.clusterRules" -}}
# kopf's resource scanning: notice the JointSearch CRD being added or changed at run time
# (read only).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# kopf's namespace scanning (only with a namespace list): check that the watched
# namespaces exist and notice them appear (read only).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
