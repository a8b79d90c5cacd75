{{/*
Helpers. Every helper takes a chart scope (.Values, .Release, .Chart): this chart's own root
context, or `(index .Subcharts "loom-sidecar")` when another chart includes the container
(mode: sidecar), so names and the config come out the same from both.
*/}}

{{- define "loom-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loom-sidecar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "loom-sidecar.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "loom-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loom-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loom-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "loom-sidecar.component" -}}
{{- if eq .Values.mode "deployment" }}gateway{{ else if eq .Values.mode "sidecar" }}sidecar{{ else }}agent{{ end -}}
{{- end -}}

{{- define "loom-sidecar.labels" -}}
helm.sh/chart: {{ include "loom-sidecar.chart" . }}
{{ include "loom-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ include "loom-sidecar.component" . }}
app.kubernetes.io/part-of: loom
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "loom-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "loom-sidecar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "loom-sidecar.configMapName" -}}
{{- include "loom-sidecar.fullname" . -}}
{{- end -}}

{{- define "loom-sidecar.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
A Kubernetes quantity ("512Mi", "1Gi", "1G", "536870912") in whole MiB. Takes the quantity, or
(list "<values key>" quantity) so an unreadable one is reported under its key.
*/}}
{{- define "loom-sidecar.quantityToMib" -}}
{{- $key := "resources.limits.memory" -}}
{{- $raw := . -}}
{{- if kindIs "slice" . -}}
{{- $key = index . 0 -}}
{{- $raw = index . 1 -}}
{{- end -}}
{{- if or (kindIs "float64" $raw) (kindIs "int" $raw) (kindIs "int64" $raw) -}}
{{- $raw = int64 $raw -}}
{{- end -}}
{{- $q := toString $raw | trim -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- $units := dict "" 1.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "k" 1000.0 "K" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 -}}
{{- if or (not $num) (not (hasKey $units $suffix)) -}}
{{- fail (printf "%s: cannot read %q as a quantity (use e.g. 512Mi, 1Gi, 600M)" $key $q) -}}
{{- end -}}
{{- divf (mulf (float64 $num) (get $units $suffix)) 1048576.0 | floor | int -}}
{{- end -}}

{{/*
memory_limiter limits as "limit spike" (MiB): limitPercentage % of the container's memory limit,
spikeLimitPercentage % of that; explicit limitMib/spikeLimitMib win.
*/}}
{{- define "loom-sidecar.memoryLimits" -}}
{{- $ml := .Values.memoryLimiter -}}
{{- $limit := 0 -}}
{{- if $ml.limitMib -}}
{{- $limit = int $ml.limitMib -}}
{{- else -}}
{{- $mem := "" -}}
{{- with .Values.resources }}{{ with .limits }}{{ $mem = .memory | default "" }}{{ end }}{{ end -}}
{{- if not $mem -}}
{{- fail "memoryLimiter.limitMib is required when resources.limits.memory is not set (the memory_limiter needs a limit)" -}}
{{- end -}}
{{- $mib := include "loom-sidecar.quantityToMib" $mem | int -}}
{{- $limit = divf (mulf $mib $ml.limitPercentage) 100.0 | floor | int -}}
{{- end -}}
{{- $spike := 0 -}}
{{- if $ml.spikeLimitMib -}}
{{- $spike = int $ml.spikeLimitMib -}}
{{- else -}}
{{- $spike = divf (mulf $limit $ml.spikeLimitPercentage) 100.0 | floor | int -}}
{{- end -}}
{{- if lt $limit 1 -}}
{{- fail (printf "memoryLimiter: the derived limit_mib is %d; raise resources.limits.memory or set memoryLimiter.limitMib" $limit) -}}
{{- end -}}
{{- if ge $spike $limit -}}
{{- fail (printf "memoryLimiter.spikeLimitMib (%d) must be smaller than the limit (%d MiB)" $spike $limit) -}}
{{- end -}}
{{- printf "%d %d" $limit $spike -}}
{{- end -}}

{{/* Env var carrying a header value read from a Secret: LOOM_<EXPORTER>_HEADER_<HEADER>. */}}
{{- define "loom-sidecar.headerEnvName" -}}
{{- regexReplaceAll "[^A-Z0-9_]" (printf "LOOM_%s_HEADER_%s" (index . 0) (index . 1) | upper) "_" -}}
{{- end -}}

{{/* The exporter settings rendered from exporters.<key> values (as a YAML mapping). */}}
{{- define "loom-sidecar.networkExporter" -}}
{{- $name := index . 0 -}}
{{- $e := index . 1 -}}
{{- $headers := dict -}}
{{- range $k, $v := $e.headers }}{{ $_ := set $headers $k (toString $v) }}{{ end -}}
{{- range $k, $ref := $e.headersFromSecret -}}
{{- $env := include "loom-sidecar.headerEnvName" (list $name $k) -}}
{{- $_ := set $headers $k (printf "%s${env:%s}" ($ref.prefix | default "") $env) -}}
{{- end -}}
endpoint: {{ $e.endpoint | toJson }}
{{- with $e.compression }}
compression: {{ . | toJson }}
{{- end }}
{{- with $e.encoding }}
encoding: {{ . | toJson }}
{{- end }}
{{- with $e.timeout }}
timeout: {{ . | toJson }}
{{- end }}
{{- with $e.tls }}
tls: {{ . | toJson }}
{{- end }}
{{- with $headers }}
headers: {{ . | toJson }}
{{- end }}
{{- end -}}

{{/* Parent folder of the exporters' persistent queues (each exporter adds a sub-folder named after its id). */}}
{{- define "loom-sidecar.queueDirectory" -}}
{{- printf "%s/queue" (.Values.persistence.mountPath | trimSuffix "/") -}}
{{- end -}}

{{/*
Network exporters the chart renders from exporters.* values (they get the persistent queue).
*/}}
{{- define "loom-sidecar.queuedExporters" -}}
{{- $ids := list -}}
{{- if .Values.exporters.jaeger.endpoint }}{{ $ids = append $ids "otlp/jaeger" }}{{ end -}}
{{- if .Values.exporters.otlphttp.endpoint }}{{ $ids = append $ids "otlphttp" }}{{ end -}}
{{- $ids | toJson -}}
{{- end -}}

{{/*
Fails on persistence.queue values that cannot work: no volume (the root filesystem is
read-only), a queue folder that two sidecars would share (they corrupt each other's log), or
queues that cannot fit in an emptyDir sizeLimit (the kubelet evicts the pod) or the chart's PVC.
*/}}
{{- define "loom-sidecar.queueChecks" -}}
{{- $v := .Values -}}
{{- $p := $v.persistence -}}
{{- $q := $p.queue | default dict -}}
{{- if $q.enabled -}}
{{- if not $p.enabled -}}
{{- fail "persistence.queue.enabled needs persistence.enabled: the exporters' write-ahead log lives on the persistence volume (the container's root filesystem is read-only)" -}}
{{- end -}}
{{- if eq $v.mode "daemonset" -}}
{{- if eq $p.type "pvc" -}}
{{- fail "persistence.queue with persistence.type=pvc in mode daemonset: every node's pod would write the same queue folder on the shared claim, and two sidecars on one queue corrupt it; use hostPath (per node, survives pod restarts) or emptyDir" -}}
{{- end -}}
{{- $us := $v.updateStrategy | default dict -}}
{{- $surge := dig "rollingUpdate" "maxSurge" 0 $us | toString -}}
{{- if and (eq $p.type "hostPath") (ne ($us.type | default "RollingUpdate") "OnDelete") (not (has $surge (list "0" "0%"))) -}}
{{- fail (printf "persistence.queue with persistence.type=hostPath: updateStrategy.rollingUpdate.maxSurge must be 0 (is %s): a surge pod would share its node's queue folder with the old pod, and two sidecars on one queue corrupt it" $surge) -}}
{{- end -}}
{{- else if and (eq $v.mode "deployment") (has $p.type (list "pvc" "hostPath")) -}}
{{- $st := $v.strategy | default dict -}}
{{- $surge := dig "rollingUpdate" "maxSurge" "25%" $st | toString -}}
{{- $oneAtATime := or (eq ($st.type | default "RollingUpdate") "Recreate") (has $surge (list "0" "0%")) -}}
{{- if or $v.autoscaling.enabled (ne (int $v.replicas) 1) (not $oneAtATime) -}}
{{- fail (printf "persistence.queue with persistence.type=%s in mode deployment needs one pod at a time (replicas: 1, autoscaling.enabled: false, strategy.type: Recreate): the pods would share one queue folder, and two sidecars on one queue corrupt it; use persistence.type=emptyDir for a gateway with several replicas" $p.type) -}}
{{- end -}}
{{- end -}}
{{- $n := include "loom-sidecar.queuedExporters" . | fromJsonArray | len -}}
{{- $needMib := divf (mulf (float64 $q.maxBytes) $n) 1048576.0 | ceil | int -}}
{{- if and (eq $p.type "emptyDir") $p.emptyDir.sizeLimit -}}
{{- $cap := include "loom-sidecar.quantityToMib" (list "persistence.emptyDir.sizeLimit" $p.emptyDir.sizeLimit) | int -}}
{{- if gt $needMib $cap -}}
{{- fail (printf "persistence.queue.maxBytes (%d bytes) for %d exporters needs %d MiB, more than persistence.emptyDir.sizeLimit (%v): the kubelet evicts a pod whose emptyDir grows past its sizeLimit; raise the sizeLimit or lower maxBytes" (int64 $q.maxBytes) $n $needMib $p.emptyDir.sizeLimit) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $p.type "pvc") (eq $v.mode "deployment") (not $p.pvc.existingClaim) -}}
{{- $cap := include "loom-sidecar.quantityToMib" (list "persistence.pvc.size" $p.pvc.size) | int -}}
{{- if gt $needMib $cap -}}
{{- fail (printf "persistence.queue.maxBytes (%d bytes) for %d exporters needs %d MiB, more than persistence.pvc.size (%v); raise the size or lower maxBytes" (int64 $q.maxBytes) $n $needMib $p.pvc.size) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
sending_queue for a network exporter: a persistent (write-ahead log) queue when
persistence.queue.enabled, else nothing (the sidecar's in-memory default). Never with
queue_size, which the sidecar rejects next to storage.
*/}}
{{- define "loom-sidecar.sendingQueue" -}}
{{- $p := .Values.persistence -}}
{{- $q := $p.queue | default dict -}}
{{- if and $p.enabled $q.enabled -}}
sending_queue:
  storage:
    directory: {{ include "loom-sidecar.queueDirectory" . | toJson }}
    max_bytes: {{ int64 $q.maxBytes }}
    fsync: {{ $q.fsync | toJson }}
    {{- if eq $q.fsync "interval" }}
    fsync_interval: {{ $q.fsyncInterval | toJson }}
    {{- end }}
  when_full: {{ $q.whenFull | toJson }}
{{- end -}}
{{- end -}}

{{- define "loom-sidecar.filePath" -}}
{{- .Values.exporters.file.path | default (printf "%s/spans.jsonl" (.Values.persistence.mountPath | trimSuffix "/")) -}}
{{- end -}}

{{/* true when no exporter is configured anywhere: the chart then falls back to debug. */}}
{{- define "loom-sidecar.debugFallback" -}}
{{- $x := .Values.exporters -}}
{{- if not (or $x.jaeger.endpoint $x.otlphttp.endpoint $x.file.enabled $x.debug.enabled $x.traceStore.enabled .Values.loadbalancing.enabled (hasKey (.Values.config | default dict) "exporters")) -}}
true
{{- end -}}
{{- end -}}

{{/* The headless Service agent-tier releases resolve: one address per ready gateway pod. */}}
{{- define "loom-sidecar.headlessName" -}}
{{- printf "%s-headless" (include "loom-sidecar.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{/* Checks of the two-tier values (docs/gateway.md) that the schema cannot express. */}}
{{- define "loom-sidecar.gatewayChecks" -}}
{{- $v := .Values -}}
{{- if and $v.tailSampling.enabled (ne $v.mode "deployment") -}}
{{- fail "tailSampling.enabled needs mode: deployment (the gateway tier); every span of a trace must reach the pod that decides it, which the agent tier's loadbalancing exporter ensures" -}}
{{- end -}}
{{- if and $v.loadbalancing.enabled (eq $v.mode "deployment") -}}
{{- fail "loadbalancing.enabled is for the agent tier (mode: daemonset or sidecar); the gateway (mode: deployment) runs tailSampling" -}}
{{- end -}}
{{- if and $v.loadbalancing.enabled (not $v.loadbalancing.hostname) -}}
{{- fail "loadbalancing.enabled needs loadbalancing.hostname: the gateway release's headless Service, e.g. <gateway-release>-loom-sidecar-headless.<namespace>.svc.cluster.local" -}}
{{- end -}}
{{- if $v.tailSampling.enabled -}}
{{- $limits := include "loom-sidecar.memoryLimits" . | splitList " " -}}
{{- $soft := sub (index $limits 0 | int) (index $limits 1 | int) -}}
{{- $maxMib := div (int64 $v.tailSampling.maxBytes) 1048576 -}}
{{- if gt (mul $maxMib 2) $soft -}}
{{- fail (printf "tailSampling.maxBytes (%d MiB) must be at most half the memory_limiter's soft limit (%d MiB): the spans tail_sampling holds count against it; raise resources.limits.memory or lower maxBytes" $maxMib $soft) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The chart's default sidecar config, before `config:` is merged over it.
*/}}
{{- define "loom-sidecar.defaultConfig" -}}
{{- $v := .Values -}}
{{- $x := $v.exporters -}}
{{- $limits := include "loom-sidecar.memoryLimits" . | splitList " " -}}
{{- include "loom-sidecar.queueChecks" . -}}
{{- include "loom-sidecar.gatewayChecks" . -}}
{{- $sendingQueue := include "loom-sidecar.sendingQueue" . -}}
{{- $pipelineExporters := list -}}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "0.0.0.0:{{ int $v.ports.otlpGrpc }}"
      http:
        endpoint: "0.0.0.0:{{ int $v.ports.otlpHttp }}"
processors:
  memory_limiter:
    limit_mib: {{ index $limits 0 }}
    spike_limit_mib: {{ index $limits 1 }}
    check_interval: {{ $v.memoryLimiter.checkInterval | toJson }}
  sampler:
    default:
      sampler: "${env:OTEL_TRACE_SAMPLER:-parentbased_always_on}"
      arg: "${env:OTEL_TRACE_SAMPLER_ARG:-1.0}"
  enrich: {}
  batch:
    send_batch_size: {{ int $v.batch.sendBatchSize }}
    timeout: {{ $v.batch.timeout | toJson }}
{{- if $v.tailSampling.enabled }}
{{- $ts := $v.tailSampling }}
  tail_sampling:
    decision_wait: {{ $ts.decisionWait | toJson }}
    num_traces: {{ int64 $ts.numTraces }}
    max_bytes: {{ int64 $ts.maxBytes }}
    when_full: {{ $ts.whenFull | toJson }}
    policies: {{ $ts.policies | toJson }}
{{- end }}
exporters:
{{- if $x.jaeger.endpoint }}
{{- $pipelineExporters = append $pipelineExporters "otlp/jaeger" }}
  otlp/jaeger:
    {{- include "loom-sidecar.networkExporter" (list "jaeger" $x.jaeger) | nindent 4 }}
    {{- with $sendingQueue }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end }}
{{- if $x.otlphttp.endpoint }}
{{- $pipelineExporters = append $pipelineExporters "otlphttp" }}
  otlphttp:
    {{- include "loom-sidecar.networkExporter" (list "otlphttp" $x.otlphttp) | nindent 4 }}
    {{- with $sendingQueue }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end }}
{{- if $x.file.enabled }}
{{- if and (not $x.file.path) (not $v.persistence.enabled) }}
{{- fail "exporters.file.enabled needs persistence.enabled (the root filesystem is read-only) or an exporters.file.path on a volume from extraVolumeMounts" }}
{{- end }}
{{- $pipelineExporters = append $pipelineExporters "file" }}
  file:
    path: {{ include "loom-sidecar.filePath" . | toJson }}
{{- end }}
{{- if $x.traceStore.enabled }}
{{- $pipelineExporters = append $pipelineExporters "trace_store" }}
  trace_store:
    endpoint: "0.0.0.0:{{ int $v.ports.traceQuery }}"
    max_bytes: {{ int64 $x.traceStore.maxBytes }}
    max_traces: {{ int64 $x.traceStore.maxTraces }}
    ttl: {{ $x.traceStore.ttl | toJson }}
{{- end }}
{{- if $v.loadbalancing.enabled }}
{{- $lb := $v.loadbalancing }}
{{- $pipelineExporters = append $pipelineExporters "loadbalancing" }}
  loadbalancing:
    routing_key: {{ $lb.routingKey | toJson }}
    protocol:
      otlp:
        timeout: {{ $lb.timeout | toJson }}
        compression: {{ $lb.compression | toJson }}
        {{- with $lb.tls }}
        tls: {{ . | toJson }}
        {{- end }}
    resolver:
      dns:
        hostname: {{ $lb.hostname | toJson }}
        port: {{ int $lb.port }}
        interval: {{ $lb.interval | toJson }}
{{- end }}
{{- if or $x.debug.enabled (include "loom-sidecar.debugFallback" .) }}
{{- $pipelineExporters = append $pipelineExporters "debug" }}
  debug:
    verbosity: {{ $x.debug.verbosity | toJson }}
{{- end }}
{{- range $id, $e := ($v.config | default dict).exporters }}
{{- if and (not (kindIs "invalid" $e)) (not (has $id $pipelineExporters)) }}
{{- $pipelineExporters = append $pipelineExporters $id }}
{{- end }}
{{- end }}
extensions:
  health_check:
    endpoint: "0.0.0.0:{{ int $v.ports.health }}"
    path: /health
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      processors: {{ ternary (list "memory_limiter" "sampler" "enrich" "tail_sampling" "batch") (list "memory_limiter" "sampler" "enrich" "batch") (and $v.tailSampling.enabled true) | toJson }}
      exporters: {{ $pipelineExporters | toJson }}
  telemetry:
    metrics:
      address: "0.0.0.0:{{ int $v.ports.metrics }}"
    logs:
      level: {{ $v.logLevel | toJson }}
  shutdown_grace: {{ $v.shutdownGrace | toJson }}
{{- end -}}

{{/* Removes null-valued keys from a map, recursively (in place). */}}
{{- define "loom-sidecar.pruneNulls" -}}
{{- $m := . -}}
{{- range $k, $v := $m -}}
{{- if kindIs "invalid" $v -}}
{{- $_ := unset $m $k -}}
{{- else if kindIs "map" $v -}}
{{- include "loom-sidecar.pruneNulls" $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The rendered sidecar config (YAML): `config:` deep-merged over the default. Maps merge key by
key; lists and scalars from `config:` win; a null removes the key (Helm's convention). Unless
`config:` sets service.pipelines.traces.exporters itself, the pipeline lists every exporter left.
*/}}
{{- define "loom-sidecar.config" -}}
{{- $base := include "loom-sidecar.defaultConfig" . | fromYaml -}}
{{- if hasKey $base "Error" -}}
{{- fail (printf "internal error: the default sidecar config is not valid YAML: %s" $base.Error) -}}
{{- end -}}
{{- $user := deepCopy (.Values.config | default dict) -}}
{{- $userPruned := deepCopy $user -}}
{{- include "loom-sidecar.pruneNulls" $userPruned -}}
{{- $merged := mustMergeOverwrite $base $user -}}
{{- include "loom-sidecar.pruneNulls" $merged -}}
{{- $traces := dig "service" "pipelines" "traces" dict $merged -}}
{{- if and $traces (not (dig "service" "pipelines" "traces" "exporters" false $userPruned)) -}}
{{- $defined := $merged.exporters | default dict -}}
{{- $kept := list -}}
{{- range $traces.exporters -}}
{{- if hasKey $defined . -}}
{{- $kept = append $kept . -}}
{{- end -}}
{{- end -}}
{{- if not $kept -}}
{{- fail "no exporter left in the traces pipeline: set exporters.jaeger.endpoint, exporters.otlphttp.endpoint, exporters.debug.enabled or add one under config.exporters" -}}
{{- end -}}
{{- $_ := set $traces "exporters" $kept -}}
{{- end -}}
{{- range $id, $e := ($merged.exporters | default dict) -}}
{{- $sq := dig "sending_queue" dict (kindIs "map" $e | ternary $e dict) -}}
{{- if and (kindIs "map" $sq) (hasKey $sq "storage") (hasKey $sq "queue_size") -}}
{{- fail (printf "exporters.%s.sending_queue: queue_size cannot be combined with storage (the persistent queue is bounded by max_bytes, persistence.queue.maxBytes); remove config.exporters.%s.sending_queue.queue_size" $id $id) -}}
{{- end -}}
{{- end -}}
{{- toYaml $merged -}}
{{- end -}}

{{- define "loom-sidecar.configChecksum" -}}
{{- $cfg := include "loom-sidecar.config" . | fromYaml -}}
{{- if dig "service" "reload" "watch" false $cfg -}}
{{- /* The sidecar reloads the rest in place (docs/reload.md): roll only for what it cannot. */ -}}
{{- dict "extensions" ($cfg.extensions | default dict) "service.extensions" (dig "service" "extensions" list $cfg) "service.telemetry" (dig "service" "telemetry" dict $cfg) | toYaml | sha256sum -}}
{{- else -}}
{{- include "loom-sidecar.config" . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/*
Pod annotation that rolls the pods when the config changes: checksum/config on this chart's
pods; checksum/loom-sidecar-config in mode sidecar, so it never clashes with the agent chart's own.
*/}}
{{- define "loom-sidecar.checksumAnnotation" -}}
{{ if eq .Values.mode "sidecar" }}checksum/loom-sidecar-config{{ else }}checksum/config{{ end }}: {{ include "loom-sidecar.configChecksum" . }}
{{- end -}}

{{- define "loom-sidecar.metricsAnnotations" -}}
{{- if .Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | int | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}

{{- define "loom-sidecar.env" -}}
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: OTEL_TRACE_SAMPLER
  value: {{ .Values.sampler.name | quote }}
- name: OTEL_TRACE_SAMPLER_ARG
  value: {{ .Values.sampler.arg | toString | quote }}
{{- range $exp := list "jaeger" "otlphttp" }}
{{- $e := index $.Values.exporters $exp }}
{{- if $e.endpoint }}
{{- range $k, $ref := $e.headersFromSecret }}
- name: {{ include "loom-sidecar.headerEnvName" (list $exp $k) }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secretName | quote }}
      key: {{ $ref.key | quote }}
      {{- if hasKey $ref "optional" }}
      optional: {{ $ref.optional }}
      {{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "loom-sidecar.volumeMounts" -}}
- name: loom-sidecar-config
  mountPath: /etc/loom-sidecar
  readOnly: true
{{- if .Values.persistence.enabled }}
- name: loom-sidecar-data
  mountPath: {{ .Values.persistence.mountPath }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Pod volumes for the sidecar container, as list items:
  volumes:
    {{- include "loom-sidecar.volumes" (index .Subcharts "loom-sidecar") | nindent 4 }}
*/}}
{{- define "loom-sidecar.volumes" -}}
- name: loom-sidecar-config
  configMap:
    name: {{ include "loom-sidecar.configMapName" . }}
    items:
      - key: config.yaml
        path: config.yaml
{{- $p := .Values.persistence }}
{{- if $p.enabled }}
- name: loom-sidecar-data
  {{- if eq $p.type "emptyDir" }}
  emptyDir:
    {{- with $p.emptyDir.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with $p.emptyDir.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
  {{- else if eq $p.type "hostPath" }}
  hostPath:
    path: {{ $p.hostPath.path }}
    type: {{ $p.hostPath.type | default "DirectoryOrCreate" }}
  {{- else if eq $p.type "pvc" }}
  {{- if and (eq .Values.mode "daemonset") (not $p.pvc.existingClaim) }}
  {{- fail "persistence.type=pvc in mode daemonset needs persistence.pvc.existingClaim (one claim shared by every node's pod: ReadWriteMany); use hostPath or emptyDir for per-node storage" }}
  {{- end }}
  {{- if and (eq .Values.mode "sidecar") (not $p.pvc.existingClaim) }}
  {{- fail "persistence.type=pvc in mode sidecar needs persistence.pvc.existingClaim (this chart renders no PersistentVolumeClaim in sidecar mode)" }}
  {{- end }}
  persistentVolumeClaim:
    claimName: {{ $p.pvc.existingClaim | default (printf "%s-data" (include "loom-sidecar.fullname" .)) }}
  {{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The sidecar container (a mapping). In this chart's DaemonSet/Deployment, and for other charts
in mode: sidecar:
  containers:
    - name: my-agent
      ...
    - {{- include "loom-sidecar.container" (index .Subcharts "loom-sidecar") | nindent 6 }}
*/}}
{{- define "loom-sidecar.container" -}}
{{- $v := .Values -}}
name: loom-sidecar
image: {{ include "loom-sidecar.image" . | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
command: [loom-sidecar]
args: ["--config", "/etc/loom-sidecar/config.yaml"]
ports:
  - name: otlp-grpc
    containerPort: {{ int $v.ports.otlpGrpc }}
    protocol: TCP
    {{- if and (eq $v.mode "daemonset") $v.hostPort.enabled (not $v.hostNetwork) }}
    hostPort: {{ int $v.ports.otlpGrpc }}
    {{- end }}
  - name: otlp-http
    containerPort: {{ int $v.ports.otlpHttp }}
    protocol: TCP
    {{- if and (eq $v.mode "daemonset") $v.hostPort.enabled (not $v.hostNetwork) }}
    hostPort: {{ int $v.ports.otlpHttp }}
    {{- end }}
  - name: health
    containerPort: {{ int $v.ports.health }}
    protocol: TCP
  - name: metrics
    containerPort: {{ int $v.ports.metrics }}
    protocol: TCP
  {{- if $v.exporters.traceStore.enabled }}
  - name: trace-query
    containerPort: {{ int $v.ports.traceQuery }}
    protocol: TCP
  {{- end }}
env:
  {{- include "loom-sidecar.env" . | nindent 2 }}
{{- with $v.extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
livenessProbe:
  httpGet:
    path: /health
    port: {{ int $v.ports.health }}
  {{- toYaml $v.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /health
    port: {{ int $v.ports.health }}
  {{- toYaml $v.readinessProbe | nindent 2 }}
{{- with $v.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  {{- include "loom-sidecar.volumeMounts" . | nindent 2 }}
{{- end -}}

{{/* The pod template shared by the DaemonSet and the Deployment. */}}
{{- define "loom-sidecar.podTemplate" -}}
metadata:
  labels:
    {{- include "loom-sidecar.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/component: {{ include "loom-sidecar.component" . }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "loom-sidecar.checksumAnnotation" . | nindent 4 }}
    {{- with include "loom-sidecar.metricsAnnotations" . }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "loom-sidecar.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- if .Values.hostNetwork }}
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  {{- end }}
  terminationGracePeriodSeconds: {{ int .Values.terminationGracePeriodSeconds }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - {{ include "loom-sidecar.container" . | nindent 6 | trim }}
  volumes:
    {{- include "loom-sidecar.volumes" . | nindent 4 }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
