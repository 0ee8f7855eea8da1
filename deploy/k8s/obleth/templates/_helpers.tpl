{{- define "obleth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "obleth.fullname" -}}
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

{{- define "obleth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "obleth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "obleth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "obleth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The proxy's pods, as opposed to the migrations Job's. */}}
{{- define "obleth.serverSelectorLabels" -}}
{{ include "obleth.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "obleth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "obleth.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "obleth.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
Milliseconds in a duration as obleth reads it ("500ms", "30s", "1m 30s").
Only these units are accepted: the render must fail rather than guess.
*/}}
{{- define "obleth.durationMs" -}}
{{- $text := toString .value -}}
{{- if not (regexMatch "^(\\s*[0-9]+(ms|s|m|h))+\\s*$" $text) -}}
{{- fail (printf "%s is %q: write a duration the chart can read, such as 500ms, 30s, 2m or 1h 30m" .key $text) -}}
{{- end -}}
{{- $factors := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" $text -1 -}}
{{- $number := regexFind "^[0-9]+" . -}}
{{- $unit := trimPrefix $number . -}}
{{- $total = add $total (mul (atoi $number) (get $factors $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
The configuration file: the operator's `config` with the keys the chart's
pods, Services and probes depend on.
*/}}
{{- define "obleth.config" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- $owned := list
      (list "listeners" (hasKey $config "listeners"))
      (list "admin.address" (hasKey ($config.admin | default dict) "address"))
      (list "metrics.address" (hasKey ($config.metrics | default dict) "address"))
      (list "store.migrate" (hasKey ($config.store | default dict) "migrate"))
      (list "store.database_url" (hasKey ($config.store | default dict) "database_url"))
      (list "telemetry.wal_path" (hasKey ($config.telemetry | default dict) "wal_path")) -}}
{{- range $owned -}}
{{- if index . 1 -}}
{{- fail (printf "config.%s is set by the chart; remove it from the values (see values.yaml)" (index . 0)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $config "listeners" (list (dict "name" "http" "address" "0.0.0.0:8080")) -}}
{{- $_ = set $config "admin" (merge (dict "address" "0.0.0.0:9090") ($config.admin | default dict)) -}}
{{- $_ = set $config "metrics" (merge (dict "address" "0.0.0.0:9091") ($config.metrics | default dict)) -}}
{{- $_ = set $config "store" (merge (dict "migrate" false) ($config.store | default dict)) -}}
# Rendered by the Helm chart from its `config` value; keys: conf/README.md.
{{ toYaml $config }}
{{- end -}}

{{/* Render-time checks of values that would otherwise fail in the cluster. */}}
{{- define "obleth.validate" -}}
{{- if not .Values.existingSecret -}}
{{- fail "existingSecret must name a Secret holding OBLETH_ADMIN_TOKEN, OBLETH_DATABASE_URL, OBLETH_API_KEY_PEPPER and OBLETH_ENCRYPTION_KEY" -}}
{{- end -}}
{{- $server := (.Values.config | default dict).server | default dict -}}
{{- $graceMs := include "obleth.durationMs" (dict "key" "config.server.grace" "value" ($server.grace | default "30s")) | int -}}
{{- $stopMs := mul (int .Values.preStopSleepSeconds) 1000 -}}
{{- $budgetMs := mul (int .Values.terminationGracePeriodSeconds) 1000 -}}
{{- if ge (add $graceMs $stopMs) $budgetMs -}}
{{- fail (printf "terminationGracePeriodSeconds (%ds) must be longer than preStopSleepSeconds (%ds) plus config.server.grace (%s): otherwise the kubelet kills obleth before its drain ends" (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds) ($server.grace | default "30s")) -}}
{{- end -}}
{{- $chartEnv := list "OBLETH_WAL_PATH" "OBLETH_LISTEN" "OBLETH_ADMIN_LISTEN" "OBLETH_METRICS_LISTEN" "OBLETH_GRACE" "OBLETH_ADMIN_TOKEN" "OBLETH_DATABASE_URL" "OBLETH_API_KEY_PEPPER" "OBLETH_ENCRYPTION_KEY" "OBLETH_CLICKHOUSE_PASSWORD" "OBLETH_REDIS_URL" "OBLETH_REDIS_PASSWORD" "DASHBOARD_PASSWORD" "DASHBOARD_SESSION_SECRET" -}}
{{- range $name, $_ := .Values.env -}}
{{- if has $name $chartEnv -}}
{{- fail (printf "env.%s is set by the chart (from existingSecret, persistence or config); remove it from env" $name) -}}
{{- end -}}
{{- end -}}
{{- if .Values.hpa.enabled -}}
{{- if gt (int .Values.hpa.minReplicas) (int .Values.hpa.maxReplicas) -}}
{{- fail "hpa.minReplicas must not exceed hpa.maxReplicas" -}}
{{- end -}}
{{- if not (dig "requests" "cpu" "" .Values.resources) -}}
{{- fail "hpa.enabled needs resources.requests.cpu: CPU utilization is measured against it" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The container's environment; the migrations Job gets the same. */}}
{{- define "obleth.env" -}}
{{- $secret := .Values.existingSecret -}}
{{- range $name := list "OBLETH_ADMIN_TOKEN" "OBLETH_DATABASE_URL" "OBLETH_API_KEY_PEPPER" "OBLETH_ENCRYPTION_KEY" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $name }}
{{- end }}
{{- range $name := list "OBLETH_CLICKHOUSE_PASSWORD" "OBLETH_REDIS_URL" "OBLETH_REDIS_PASSWORD" "DASHBOARD_PASSWORD" "DASHBOARD_SESSION_SECRET" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $name }}
      optional: true
{{- end }}
- name: OBLETH_WAL_PATH
  value: {{ printf "%s/wal" (.Values.persistence.mountPath | trimSuffix "/") | quote }}
{{- range $name, $value := .Values.env }}
{{- if ne (toString $value) "" }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The pod-level settings the server pods and the migrations Job share. */}}
{{- define "obleth.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}
