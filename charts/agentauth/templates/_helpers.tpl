{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "agentauth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name, or <release>-agentauth. */}}
{{- define "agentauth.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains (include "agentauth.name" .) .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "agentauth.name" .) | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "agentauth.controller.fullname" -}}{{ include "agentauth.fullname" . }}-controller{{- end -}}
{{- define "agentauth.tokenService.fullname" -}}{{ include "agentauth.fullname" . }}-token-service{{- end -}}
{{- define "agentauth.webhook.name" -}}{{ include "agentauth.fullname" . }}-webhook{{- end -}}

{{- define "agentauth.controller.serviceAccountName" -}}
{{- default (include "agentauth.controller.fullname" .) .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- define "agentauth.tokenService.serviceAccountName" -}}
{{- default (include "agentauth.tokenService.fullname" .) .Values.tokenService.serviceAccount.name -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "agentauth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "agentauth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentauth
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" . "component" "controller"). */}}
{{- define "agentauth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentauth.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "agentauth.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* issuer.url, or a render failure saying what to set (values.schema.json also requires it). */}}
{{- define "agentauth.issuerURL" -}}
{{- required "issuer.url is required: the public HTTPS URL of the token service, which every agent token and agent pod carries (e.g. --set issuer.url=https://agentauth.example.com)" .Values.issuer.url -}}
{{- end -}}

{{- define "agentauth.tokenServiceURL" -}}
{{- default (include "agentauth.issuerURL" .) .Values.issuer.tokenServiceURL -}}
{{- end -}}

{{/* Host name (no port) of a URL; call with the URL string. */}}
{{- define "agentauth.urlHost" -}}
{{- regexReplaceAll ":[0-9]+$" (urlParse .).host "" -}}
{{- end -}}

{{/* The Secret holding the token service's certificate, or "" without TLS. Fails when TLS is on
without exactly one certificate source. */}}
{{- define "agentauth.tokenService.tlsSecretName" -}}
{{- $tls := .Values.tokenService.tls -}}
{{- if $tls.enabled -}}
{{- if and $tls.secretName $tls.certManager.enabled -}}
{{- fail "tokenService.tls: set either secretName (a Secret you created) or certManager.enabled=true, not both" -}}
{{- else if $tls.secretName -}}
{{- $tls.secretName -}}
{{- else if $tls.certManager.enabled -}}
{{- printf "%s-tls" (include "agentauth.tokenService.fullname" .) -}}
{{- else -}}
{{- fail "tokenService.tls.enabled is true but there is no certificate: set tokenService.tls.secretName to a kubernetes.io/tls Secret you created, or tokenService.tls.certManager.enabled=true with tokenService.tls.certManager.issuerRef, or (only when TLS ends at an Ingress or Gateway in front of it) tokenService.tls.enabled=false. See docs/operations.md#tls-for-the-token-service" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the token service's Service port: https with TLS, else http. */}}
{{- define "agentauth.tokenService.portName" -}}
{{- if .Values.tokenService.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* Environment shared by both components (each reads every variable here). */}}
{{- define "agentauth.commonEnv" -}}
- name: AGENTAUTH_CONTROLLER_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: AGENTAUTH_ISSUER
  value: {{ include "agentauth.issuerURL" . | quote }}
- name: AGENTAUTH_TOKEN_SERVICE_URL
  value: {{ include "agentauth.tokenServiceURL" . | quote }}
{{- with .Values.issuer.trustDomain }}
- name: AGENTAUTH_TRUST_DOMAIN
  value: {{ . | quote }}
{{- end }}
{{- /* The token service must see every namespace the controller reconciles: one value, one
variable, the same syntax in both. */}}
- name: AGENTAUTH_WATCH_NAMESPACES
  value: {{ join "," .Values.controller.watchNamespaces | quote }}
- name: AGENTAUTH_LOG_LEVEL
  value: {{ .Values.global.logLevel | quote }}
{{- /* Who may claim which cloud identities and resource URIs: one policy, read by both. */}}
- name: AGENTAUTH_CLAIM_POLICY
  value: {{ .Values.claimPolicy | toJson | quote }}
{{- end -}}

{{/* The webhook clientConfig for one path; call with (dict "ctx" . "path" "/mutate/pods"). */}}
{{- define "agentauth.webhook.clientConfig" -}}
{{- if .ctx.Values.webhook.url }}
url: {{ printf "%s%s" (trimSuffix "/" .ctx.Values.webhook.url) .path | quote }}
{{- else }}
service:
  name: {{ include "agentauth.controller.fullname" .ctx }}
  namespace: {{ .ctx.Release.Namespace }}
  path: {{ .path | quote }}
  port: 443
{{- end }}
{{- end -}}

{{/* Namespace selector of every webhook: never the chart's own namespace. */}}
{{- define "agentauth.webhook.namespaceSelector" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: [{{ .Release.Namespace | quote }}]
    {{- with .Values.webhook.namespaceSelector.matchExpressions }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.webhook.namespaceSelector.matchLabels }}
  matchLabels:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
