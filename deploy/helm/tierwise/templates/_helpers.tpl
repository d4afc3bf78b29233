{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "tierwise.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every resource. */}}
{{- define "tierwise.fullname" -}}
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

{{/* Resource names of the two components (room left for the "-headless" suffix). */}}
{{- define "tierwise.classifier.fullname" -}}
{{- printf "%s-classifier" (include "tierwise.fullname" .) | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- define "tierwise.router.fullname" -}}
{{- printf "%s-router" (include "tierwise.fullname" .) | trunc 54 | trimSuffix "-" }}
{{- end }}
{{/* The router's Service faces clients beyond the cluster (LoadBalancer, NodePort): its plaintext health port and
     metrics port then go on an internal ClusterIP Service of their own instead (tierwise.router.internal). */}}
{{- define "tierwise.router.exposed" -}}
{{- if and (not .Values.router.service.headless) (ne .Values.router.service.type "ClusterIP") }}true{{ end }}
{{- end }}
{{- define "tierwise.router.internalPorts" -}}
{{- if .Values.router.tls.enabled }}
# Plaintext grpc.health.v1 only (for `helm test` and probes; the kubelet's grpc probes cannot speak TLS).
- name: health
  port: {{ .Values.router.tls.healthPort }}
  targetPort: health
  protocol: TCP
  appProtocol: kubernetes.io/h2c
{{- end }}
{{ include "tierwise.metricsServicePort" . }}
{{- end }}
{{- define "tierwise.router.internal" -}}
{{- printf "%s-internal" (include "tierwise.router.fullname" .) }}
{{- end }}
{{- define "tierwise.classifier.headless" -}}
{{- printf "%s-headless" (include "tierwise.classifier.fullname" .) }}
{{- end }}

{{/* The routers' classifier target: client-side round robin over the headless Service's pod addresses. */}}
{{- define "tierwise.classifier.target" -}}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "tierwise.classifier.headless" .) .Release.Namespace .Values.clusterDomain (int .Values.classifier.port) }}
{{- end }}

{{- define "tierwise.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tierwise.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels. Call with (dict "root" $ "component" "classifier"|"router"|"") */}}
{{- define "tierwise.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tierwise.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "tierwise.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tierwise.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tierwise
{{- end }}

{{/* Image reference: repository@digest when a digest is set, else repository:tag (tag defaults to appVersion).
     Call with (dict "root" $ "image" .Values.<component>.image) */}}
{{- define "tierwise.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag | toString) }}
{{- end }}
{{- end }}

{{/* OTLP environment shared by both components. */}}
{{- define "tierwise.otelEnv" -}}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
{{- end }}
{{- range $name, $value := .Values.otel.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Soft spread over nodes unless the user gave topologySpreadConstraints.
     Call with (dict "root" $ "component" "classifier"|"router" "values" .Values.<component>) */}}
{{- define "tierwise.topologySpread" -}}
{{- if .values.topologySpreadConstraints }}
{{- toYaml .values.topologySpreadConstraints }}
{{- else }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "tierwise.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
{{- end }}
{{- end }}

{{/* checkov findings accepted for this chart, each with its reason; checkov reads checkov.io/skipN annotations.
     Only the findings that apply to the values at hand are skipped (set a digest and CKV_K8S_43 is checked again).
     Call with (dict "image" .Values.<component>.image "secretEnv" bool "oneShot" bool); renders annotation lines. */}}
{{- define "tierwise.checkovSkips" -}}
{{- $skips := list }}
{{- if not .image.digest }}
{{- $skips = append $skips "CKV_K8S_43=no image.digest is set: the images are built from this repository (deploy/*.Dockerfile), so no digest can be known in advance; set image.digest and the image is pulled by digest" }}
{{- end }}
{{- if ne .image.pullPolicy "Always" }}
{{- $skips = append $skips "CKV_K8S_15=IfNotPresent is right for immutable release tags and digests; Always adds a registry round trip to every pod start and makes scale-out depend on the registry (set image.pullPolicy to Always for mutable tags)" }}
{{- end }}
{{- if .secretEnv }}
{{- $skips = append $skips "CKV_K8S_35=the router reads provider keys only from the environment variables named by api_key_env (router_service/providers.py); they come from an existing Secret by secretKeyRef, never from values" }}
{{- end }}
{{- if .oneShot }}
{{- $skips = append $skips "CKV_K8S_8=one-shot helm test pod: it runs a single health check and exits, there is nothing for a liveness probe to watch" }}
{{- $skips = append $skips "CKV_K8S_9=one-shot helm test pod: nothing sends it traffic, so a readiness probe has no meaning" }}
{{- end }}
{{- range $i, $skip := $skips }}
checkov.io/skip{{ add1 $i }}: {{ $skip | quote }}
{{- end }}
{{- end }}

{{/* TLS of a component's own port: a kubernetes.io/tls Secret mounted as a directory (never subPath, which never
     sees updates) at /etc/tierwise-tls, re-read by the server when it changes, and a plaintext health-only port for
     the kubelet's grpc probes, which cannot speak TLS. Call with (dict "name" "classifier"|"router" "values"
     .Values.<component> "host" .Values.listenHost). */}}
{{- define "tierwise.tlsArgs" -}}
{{- if .values.tls.enabled }}
- --tls-cert
- /etc/tierwise-tls/tls.crt
- --tls-key
- /etc/tierwise-tls/tls.key
{{- if .values.tls.requireClientCert }}
- --tls-client-ca
- /etc/tierwise-tls/ca.crt
{{- end }}
- --health-listen
- "{{ .host }}:{{ .values.tls.healthPort }}"
{{- end }}
{{- end }}

{{- define "tierwise.tlsPort" -}}
{{- if .values.tls.enabled }}
- name: health
  containerPort: {{ .values.tls.healthPort }}
  protocol: TCP
{{- end }}
{{- end }}

{{- define "tierwise.tlsMount" -}}
{{- if .values.tls.enabled }}
- name: tls
  mountPath: /etc/tierwise-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "tierwise.tlsVolume" -}}
{{- if .values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required (printf "%s.tls.secretName: the Secret holding the %s's certificate (tls.crt, tls.key)" .name .name) .values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* The port the probes and `helm test` check: the plaintext health port while the component serves TLS. Call with
     .Values.<component>. */}}
{{- define "tierwise.healthPort" -}}
{{- if .tls.enabled }}{{ .tls.healthPort }}{{ else }}{{ .port }}{{ end }}
{{- end }}

{{/* Prometheus metrics of a component (metrics.enabled): its --metrics-listen argument, its container port, the
     prometheus.io/* pod annotations (metrics.podAnnotations) and, for the ServiceMonitor only, its Service port. */}}
{{- define "tierwise.metricsArgs" -}}
{{- if .Values.metrics.enabled }}
- --metrics-listen
- "{{ .Values.listenHost }}:{{ .Values.metrics.port }}"
{{- end }}
{{- end }}

{{- define "tierwise.metricsPort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{- define "tierwise.metricsAnnotations" -}}
{{- if and .Values.metrics.enabled .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{- define "tierwise.metricsServicePort" -}}
{{- if and .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled }}
- name: metrics
  port: {{ .Values.metrics.port }}
  targetPort: metrics
  protocol: TCP
  appProtocol: http
{{- end }}
{{- end }}

{{- /* One setting of the router's config, `section.key`, or `default` when it is absent or the section is left empty
     (`shutdown:` with nothing under it is null, which `dig` cannot read). Usage:
     include "tierwise.routerSetting" (dict "config" .Values.router.config "section" "spend" "key" "ledger" "default" "") */ -}}
{{- define "tierwise.routerSetting" -}}
{{- $section := index (.config | default dict) .section | default dict -}}
{{- index $section .key | default .default -}}
{{- end }}
