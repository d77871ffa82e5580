{{/*
Names, labels and the TOML writer shared by every template.
*/}}

{{- define "sipcluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sipcluster.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every resource; "component" in the context names the service. */}}
{{- define "sipcluster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "sipcluster.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: sipcluster
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels a component's pods are selected by (the dispatcher finds edges by them). */}}
{{- define "sipcluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sipcluster.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The same as a label selector string (for the dispatcher's Kubernetes discovery). */}}
{{- define "sipcluster.selectorString" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=%s" (include "sipcluster.name" .root) .root.Release.Name .component -}}
{{- end -}}

{{- define "sipcluster.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "sipcluster.secretName" -}}
{{- default (printf "%s-secrets" (include "sipcluster.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The location service's URL, the same for the edges and for the dispatchers that share
the cluster's bans: the chart's own (location.enabled), else edge.externalLocation. Both
present the edge token (the Secret's edge-token) to it. */}}
{{- define "sipcluster.locationEndpoint" -}}
{{- if .Values.location.enabled -}}
{{- printf "http://%s-location:%d" (include "sipcluster.fullname" .) (int .Values.location.port) -}}
{{- else if .Values.edge.externalLocation -}}
{{- .Values.edge.externalLocation -}}
{{- else -}}
{{- fail "edge.externalLocation: with location.enabled false the edges (and the dispatchers sharing bans, dispatcher.bans.shareWithCluster) need your location service's URL (http://host:50051)" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the dispatchers read and publish the cluster's bans through the location
service (dispatcher.bans.shareWithCluster), with the edge token; empty when they keep
their own. */}}
{{- define "sipcluster.dispatcherSharesBans" -}}
{{- if and .Values.dispatcher.enabled .Values.dispatcher.bans.shareWithCluster -}}true{{- end -}}
{{- end -}}

{{/* Whether an API group/version is served (the cluster's, or apiVersions from values). */}}
{{- define "sipcluster.hasAPI" -}}
{{- if or (.root.Capabilities.APIVersions.Has .api) (has .api .root.Values.apiVersions) -}}true{{- end -}}
{{- end -}}

{{- define "sipcluster.hpaAPI" -}}
{{- if include "sipcluster.hasAPI" (dict "root" . "api" "autoscaling/v2") -}}autoscaling/v2{{- else -}}autoscaling/v2beta2{{- end -}}
{{- end -}}

{{- define "sipcluster.pdbAPI" -}}
{{- if include "sipcluster.hasAPI" (dict "root" . "api" "policy/v1") -}}policy/v1{{- else -}}policy/v1beta1{{- end -}}
{{- end -}}

{{/* The container securityContext; "ports" lists the ports the container binds. */}}
{{- define "sipcluster.containerSecurityContext" -}}
{{- $ctx := deepCopy .root.Values.security.containerSecurityContext -}}
{{- $low := false -}}
{{- range .ports }}{{ if lt (int .) 1024 }}{{ $low = true }}{{ end }}{{ end -}}
{{- if $low -}}
{{- $caps := default dict $ctx.capabilities -}}
{{- $_ := set $caps "add" (list "NET_BIND_SERVICE") -}}
{{- $_ := set $ctx "capabilities" $caps -}}
{{- end -}}
{{ toYaml $ctx }}
{{- end -}}

{{/* Preferred anti-affinity over nodes for a component, unless the values give one. */}}
{{- define "sipcluster.affinity" -}}
{{- if .affinity -}}
{{ toYaml .affinity }}
{{- else -}}
podAntiAffinity:
  {{- if .required }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "sipcluster.selectorLabels" . | nindent 10 }}
  {{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "sipcluster.selectorLabels" . | nindent 12 }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/* Log settings every service takes from the environment. */}}
{{- define "sipcluster.logEnv" -}}
- name: SIPCLUSTER_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: SIPCLUSTER_LOG
  value: {{ .Values.log.level | quote }}
{{- end -}}

{{/* OpenTelemetry settings every service takes from the environment (values: tracing);
nothing when no endpoint is set. */}}
{{- define "sipcluster.traceEnv" -}}
{{- with .Values.tracing.otlpEndpoint }}
- name: SIPCLUSTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: SIPCLUSTER_TRACE_SAMPLE_RATIO
  value: {{ $.Values.tracing.sampleRatio | quote }}
{{- end }}
{{- end -}}

{{/* Probes on the metrics port: alive (/healthz) and ready (/readyz). */}}
{{- define "sipcluster.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 1
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 2
  timeoutSeconds: 2
  failureThreshold: 2
{{- end -}}

{{/*
TOML: the services read TOML; Helm's toToml prints every YAML number as a float (5.0)
and its keys unquoted, which the services' strict parsers refuse. A key is bare when it
can be, else quoted; integers stay integers; lists of maps become inline tables.
*/}}
{{- define "sipcluster.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "sipcluster.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "map" $v -}}
{ {{- $first := true -}}
{{- range $k := keys $v | sortAlpha -}}
{{- $x := index $v $k -}}
{{- if not (kindIs "invalid" $x) -}}
{{- if not $first }}, {{ else }} {{ end -}}
{{- $first = false -}}
{{ include "sipcluster.toml.key" $k }} = {{ include "sipcluster.toml.value" $x }}
{{- end -}}
{{- end }} }
{{- else if kindIs "slice" $v -}}
[{{- range $i, $x := $v -}}{{- if $i }}, {{ end -}}{{ include "sipcluster.toml.value" $x }}{{- end -}}]
{{- else if kindIs "string" $v -}}
{{ toJson $v }}
{{- else if kindIs "float64" $v -}}
{{- if eq (float64 (int64 $v)) $v -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else -}}
{{ $v }}
{{- end -}}
{{- end -}}

{{/* A table: its plain keys, then its sub-tables as [path.key] sections. */}}
{{- define "sipcluster.toml.table" -}}
{{- $m := .map -}}
{{- $path := .path -}}
{{- range $k := keys $m | sortAlpha -}}
{{- $x := index $m $k -}}
{{- if not (or (kindIs "map" $x) (kindIs "invalid" $x)) }}
{{ include "sipcluster.toml.key" $k }} = {{ include "sipcluster.toml.value" $x }}
{{- end -}}
{{- end -}}
{{- range $k := keys $m | sortAlpha -}}
{{- $x := index $m $k -}}
{{- if kindIs "map" $x -}}
{{- $p := include "sipcluster.toml.key" $k -}}
{{- if $path }}{{ $p = printf "%s.%s" $path $p }}{{ end }}

[{{ $p }}]
{{- include "sipcluster.toml.table" (dict "path" $p "map" $x) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A service's settings: the chart's, then `config:` from values over them, key by key.
Sprig's mergeOverwrite skips a false or 0 in the values (mergo treats them as empty), so
`config: {sip: {record_route: false}}` would be lost: this merge keeps every value given.
Returns JSON (templates return strings); fromJson turns it back into a map.
*/}}
{{- define "sipcluster.merge" -}}
{{- $out := deepCopy .base -}}
{{- range $k, $v := .over -}}
{{- $old := index $out $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $old) -}}
{{- $_ := set $out $k (include "sipcluster.merge" (dict "base" $old "over" $v) | fromJson) -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The whole file from a map. */}}
{{- define "sipcluster.toml" -}}
{{- include "sipcluster.toml.table" (dict "path" "" "map" .) | trimPrefix "\n" }}
{{- end -}}

{{/* The `[hep]` section the edges and dispatchers share (values: hep), as JSON; `{}`
when off. */}}
{{- define "sipcluster.hep" -}}
{{- $h := .Values.hep }}
{{- if $h.enabled }}
{{- if not $h.address }}
{{- fail "hep.address: the HEP collector's host:port (e.g. heplify-server.monitoring:9060)" }}
{{- end }}
{{- dict "enabled" true "address" $h.address "transport" $h.transport "sample_ratio" (float64 $h.sampleRatio) "capture_id" (int64 $h.captureId) | toJson }}
{{- else }}
{{- dict | toJson }}
{{- end }}
{{- end -}}

{{/* SIP over TLS on the dispatchers (values: tls): the name of the kubernetes.io/tls
Secret the dispatchers mount, after checking the settings; empty when TLS is off. The
Certificate (certManager) writes to the same name. */}}
{{- define "sipcluster.tlsSecret" -}}
{{- $t := .Values.tls }}
{{- if $t.enabled }}
{{- if not .Values.dispatcher.enabled }}
{{- fail "tls.enabled: SIP over TLS is served by the dispatchers; it needs dispatcher.enabled" }}
{{- end }}
{{- if not (or $t.existingSecret $t.certManager.enabled) }}
{{- fail "tls.enabled: the certificate needs a source: tls.existingSecret (a kubernetes.io/tls Secret with tls.crt and tls.key) or tls.certManager.enabled (a cert-manager Certificate)" }}
{{- end }}
{{- if $t.certManager.enabled }}
{{- if not $t.certManager.issuerRef.name }}
{{- fail "tls.certManager.issuerRef.name: the Issuer or ClusterIssuer that signs the dispatchers' certificate" }}
{{- end }}
{{- if not $t.certManager.dnsNames }}
{{- fail "tls.certManager.dnsNames: the names phones and trunks reach the dispatchers by (at least one)" }}
{{- end }}
{{- end }}
{{- default (printf "%s-dispatcher-tls" (include "sipcluster.fullname" .)) $t.existingSecret }}
{{- end }}
{{- end -}}

{{/* SIP over WebSocket on the dispatchers (values: websocket): the TCP port they listen
on (tlsPort for wss:, port for ws:), after checking the settings; empty when off. */}}
{{- define "sipcluster.websocketPort" -}}
{{- $w := .Values.websocket }}
{{- if $w.enabled }}
{{- if not .Values.dispatcher.enabled }}
{{- fail "websocket.enabled: SIP over WebSocket is served by the dispatchers; it needs dispatcher.enabled" }}
{{- end }}
{{- if and $w.secure (not .Values.tls.enabled) }}
{{- fail "websocket.secure: secure WebSocket (wss:) uses the dispatchers' TLS certificate: set tls.enabled (with tls.existingSecret or tls.certManager), or websocket.secure false for plain ws: behind a proxy that terminates TLS" }}
{{- end }}
{{- $key := ternary "websocket.tlsPort" "websocket.port" (not (not $w.secure)) }}
{{- $port := int (ternary $w.tlsPort $w.port (not (not $w.secure))) }}
{{- $taken := dict (toString (int .Values.sip.port)) "sip.port" (toString (int .Values.dispatcher.adminPort)) "dispatcher.adminPort" (toString (int .Values.dispatcher.metricsPort)) "dispatcher.metricsPort" }}
{{- if .Values.tls.enabled }}{{ $_ := set $taken (toString (int .Values.tls.port)) "tls.port" }}{{ end }}
{{- with index $taken (toString $port) }}
{{- fail (printf "%s: %d is already the dispatchers' %s (TCP)" $key $port .) }}
{{- end }}
{{- $port }}
{{- end }}
{{- end -}}
