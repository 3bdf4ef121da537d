{{/* Names, labels and derived settings shared by the templates. */}}

{{- define "gw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gw.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; the component label is added per object. */}}
{{- define "gw.labels" -}}
helm.sh/chart: {{ include "gw.chart" . }}
app.kubernetes.io/name: {{ include "gw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: arvados
{{- end -}}

{{/* The controller pods; the component keeps the test Pod out of the Services. */}}
{{- define "gw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "gw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gw.configMapName" -}}
{{- default (printf "%s-config" (include "gw.fullname" .)) .Values.existingConfigMap -}}
{{- end -}}

{{- define "gw.secretName" -}}
{{- default (printf "%s-root-token" (include "gw.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{- define "gw.peersServiceName" -}}
{{- printf "%s-peers" (include "gw.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gw.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "gw.controllerUrl" -}}
{{- default (printf "http://127.0.0.1:%d" (int .Values.controller.port)) .Values.sidecar.controllerUrl -}}
{{- end -}}

{{/* Where the root token file is mounted in the sidecar and the test Pod. */}}
{{- define "gw.tokenDir" -}}/etc/arvados-gateway/root-token{{- end -}}
{{- define "gw.tokenFile" -}}{{ include "gw.tokenDir" . }}/SystemRootToken{{- end -}}

{{/* The root token Secret as a volume: only its one key, under a fixed file name. */}}
{{- define "gw.tokenVolume" -}}
- name: root-token
  secret:
    secretName: {{ include "gw.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.existingSecretKey }}
        path: SystemRootToken
{{- end -}}

{{/* Combinations of values that render but could not work. */}}
{{- define "gw.validate" -}}
{{- $grace := add (int .Values.sidecar.drainGraceSeconds) (int .Values.sidecar.preStopSleepSeconds) -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $grace) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed sidecar.drainGraceSeconds + sidecar.preStopSleepSeconds (%d)" (int .Values.terminationGracePeriodSeconds) (int $grace)) -}}
{{- end -}}
{{- if and .Values.rootToken .Values.existingSecret -}}
{{- fail "set rootToken or existingSecret, not both" -}}
{{- end -}}
{{- if and (not .Values.existingConfigMap) (not .Values.clusterConfig) -}}
{{- fail "set clusterConfig or existingConfigMap" -}}
{{- end -}}
{{- if and .Values.podDisruptionBudget.enabled (not .Values.podDisruptionBudget.maxUnavailable) (not (kindIs "string" .Values.podDisruptionBudget.minAvailable)) -}}
{{- if ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount) -}}
{{- fail "podDisruptionBudget.minAvailable must be below replicaCount, or no pod could ever be evicted" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.admin.namespaceSelector) (not .Values.networkPolicy.admin.podSelector) -}}
{{- fail "networkPolicy.admin needs a namespaceSelector or a podSelector" -}}
{{- end -}}
{{- end -}}
