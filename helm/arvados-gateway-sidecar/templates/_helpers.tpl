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

{{/* Labels on every object besides name and instance; pod templates add the selector's. */}}
{{- define "gw.commonLabels" -}}
helm.sh/chart: {{ include "gw.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: arvados
{{- end -}}

{{/* Labels on every object; the component label is added per object. */}}
{{- define "gw.labels" -}}
app.kubernetes.io/name: {{ include "gw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "gw.commonLabels" . }}
{{- end -}}

{{/* The controller pods; the component keeps the test Pod out of the Services. */}}
{{- define "gw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{/* The helm test Pod, which the NetworkPolicy lets in. */}}
{{- define "gw.testLabels" -}}
app.kubernetes.io/name: {{ include "gw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
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

{{/* The peers' headless Service as a DNS name, which the sidecar resolves to the peers. */}}
{{- define "gw.peersServiceHost" -}}
{{- printf "%s.%s.svc.%s"
  (include "gw.peersServiceName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "gw.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "gw.controllerUrl" -}}
{{- $local := printf "http://127.0.0.1:%d" (int .Values.controller.port) -}}
{{- default $local .Values.sidecar.controllerUrl -}}
{{- end -}}

{{/* Where the root token file is mounted in the sidecar and the test Pod. */}}
{{- define "gw.tokenDir" -}}/etc/arvados-gateway/root-token{{- end -}}
{{- define "gw.tokenFile" -}}{{ include "gw.tokenDir" . }}/SystemRootToken{{- end -}}

{{/* The root token Secret as a volume: only its one key, under a fixed file name. */}}
{{- define "gw.tokenVolume" -}}
- name: root-token
  secret:
    secretName: {{ include "gw.secretName" . }}
    defaultMode: 288 {{- /* 0440: the owner and the pod's fsGroup may read */}}
    items:
      - key: {{ .Values.existingSecretKey }}
        path: SystemRootToken
{{- end -}}

{{/* Combinations of values that render but could not work. */}}
{{- define "gw.validate" -}}
{{- $v := .Values -}}
{{- $grace := add (int $v.sidecar.drainGraceSeconds) (int $v.sidecar.preStopSleepSeconds) -}}
{{- if le (int $v.terminationGracePeriodSeconds) (int $grace) -}}
{{- fail (printf "%s (%d) must exceed %s (%d)"
  "terminationGracePeriodSeconds" (int $v.terminationGracePeriodSeconds)
  "sidecar.drainGraceSeconds + sidecar.preStopSleepSeconds" (int $grace)) -}}
{{- end -}}
{{- if and $v.rootToken $v.existingSecret -}}
{{- fail "set rootToken or existingSecret, not both" -}}
{{- end -}}
{{- if and (not $v.existingConfigMap) (not $v.clusterConfig) -}}
{{- fail "set clusterConfig or existingConfigMap" -}}
{{- end -}}
{{- $pdb := $v.podDisruptionBudget -}}
{{- if and $pdb.enabled (not $pdb.maxUnavailable) (not (kindIs "string" $pdb.minAvailable)) -}}
{{- if ge (int $pdb.minAvailable) (int $v.replicaCount) -}}
{{- fail (printf "%s, or no pod could ever be evicted"
  "podDisruptionBudget.minAvailable must be below replicaCount") -}}
{{- end -}}
{{- end -}}
{{- $admin := $v.networkPolicy.admin -}}
{{- if and $v.networkPolicy.enabled (not $admin.namespaceSelector) (not $admin.podSelector) -}}
{{- fail "networkPolicy.admin needs a namespaceSelector or a podSelector" -}}
{{- end -}}
{{- end -}}

{{/* host:port to listen on, for (list $ port): an IPv6 host goes in brackets. */}}
{{- define "gw.listen" -}}
{{- $h := (index . 0).Values.sidecar.listenHost -}}
{{- $port := int (index . 1) -}}
{{- if contains ":" $h -}}[{{ $h }}]:{{ $port }}{{- else -}}{{ $h }}:{{ $port }}{{- end -}}
{{- end -}}
