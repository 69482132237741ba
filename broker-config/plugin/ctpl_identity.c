/*
 * ctpl_identity: the CTPL fleet's identity rules inside Mosquitto 2.0 (plugin API 5).
 *
 * Who a client is comes from its client certificate's CN, never from what it sends:
 *
 *   1. CONNECT (MOSQ_EVT_BASIC_AUTH, called for every client because the listener does
 *      not set use_identity_as_username): the CN must be a vid (v + 7..39 of [a-z0-9])
 *      or a cloud worker (ctpl-cloud, or ctpl-cloud-<name>, name 1..40 of [a-z0-9-]);
 *      the client id must equal the CN; the certificate's serial must not be in the CRL
 *      (plugin_opt_crl_file). Then the username becomes the CN, whatever CONNECT said,
 *      so the acl_file's %u is the CN. Anything else gets CONNACK "not authorized".
 *   2. SUBSCRIBE: a car only within its own ctpl/v1/<vid>/down/; a cloud worker only
 *      within ctpl/v1/# and $share/cloud/ctpl/v1/#. Nothing else, $SYS included.
 *   3. PUBLISH and delivery: a car writes only its own up/... and presence, reads only its
 *      own down/... and presence; the acl_file must agree too (the plugin answers
 *      "defer" where it allows a car, so a car needs both). A cloud worker writes only
 *      ctpl/v1/<vid>/down/<kind>, reads ctpl/v1/#; the acl_file cannot name a CN prefix,
 *      so the plugin alone grants the cloud.
 *   4. SIGHUP (MOSQ_EVT_RELOAD): the CRL is read again; Mosquitto then runs rule 1 for
 *      every connected client, and one whose certificate is now revoked is disconnected.
 *
 * Built by `make broker-plugin`; see broker-config/README.md.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define LOG_PREFIX "ctpl_identity: "
#define TOPIC_ROOT "ctpl/v1/"
#define CLOUD_SHARE "$share/cloud/"
#define CLOUD_CN "ctpl-cloud"
#define CN_MAX 64 /* X.509 upper bound of a common name */

enum identity { ID_NONE, ID_CAR, ID_CLOUD };

static mosquitto_plugin_id_t *plugin_id;
static char *crl_path;
static X509_CRL *crl; /* the CRL as last read: the serials that may not stay connected */

/* ---- identities ------------------------------------------------------------------ */

static bool all_of(const char *s, size_t len, bool allow_dash)
{
	for(size_t i = 0; i < len; i++){
		char c = s[i];
		if(!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (allow_dash && c == '-'))){
			return false;
		}
	}
	return true;
}

static enum identity classify(const char *cn)
{
	size_t len, base = strlen(CLOUD_CN);

	if(cn == NULL){
		return ID_NONE;
	}
	len = strlen(cn);
	if(cn[0] == 'v' && len >= 8 && len <= 40 && all_of(cn + 1, len - 1, false)){
		return ID_CAR;
	}
	if(strncmp(cn, CLOUD_CN, base) == 0){
		if(len == base){
			return ID_CLOUD;
		}
		if(cn[base] == '-' && len > base + 1 && len <= base + 41
				&& all_of(cn + base + 1, len - base - 1, true)){
			return ID_CLOUD;
		}
	}
	return ID_NONE;
}

/* The certificate's first CN into out; false if it has none, an empty one, an embedded NUL
 * or one too long. */
static bool common_name(X509 *cert, char *out, size_t size)
{
	X509_NAME *name = X509_get_subject_name(cert);
	X509_NAME_ENTRY *entry;
	ASN1_STRING *data;
	int at, len;

	if(name == NULL){
		return false;
	}
	at = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
	if(at < 0 || (entry = X509_NAME_get_entry(name, at)) == NULL){
		return false;
	}
	data = X509_NAME_ENTRY_get_data(entry);
	if(data == NULL){
		return false;
	}
	len = ASN1_STRING_length(data);
	if(len <= 0 || (size_t)len >= size){
		return false;
	}
	memcpy(out, ASN1_STRING_get0_data(data), (size_t)len);
	out[len] = '\0';
	return strlen(out) == (size_t)len;
}

static bool revoked(X509 *cert)
{
	X509_REVOKED *entry = NULL;

	return crl != NULL && X509_CRL_get0_by_serial(crl, &entry, X509_get_serialNumber(cert)) == 1;
}

/* Read the CRL at crl_path; on failure keep the one held and return false. */
static bool read_crl(void)
{
	FILE *f = fopen(crl_path, "r");
	X509_CRL *fresh;

	if(f == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot open the CRL %s", crl_path);
		return false;
	}
	fresh = PEM_read_X509_CRL(f, NULL, NULL, NULL);
	fclose(f);
	if(fresh == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "%s holds no PEM CRL", crl_path);
		return false;
	}
	X509_CRL_free(crl);
	crl = fresh;
	return true;
}

/* ---- topics ---------------------------------------------------------------------- */

/* Whether topic is exactly ctpl/v1/<vid>/<level>. */
static bool is_own(const char *topic, const char *vid, const char *level)
{
	size_t root = strlen(TOPIC_ROOT), vlen = strlen(vid);

	if(strncmp(topic, TOPIC_ROOT, root) != 0 || strncmp(topic + root, vid, vlen) != 0
			|| topic[root + vlen] != '/'){
		return false;
	}
	return strcmp(topic + root + vlen + 1, level) == 0;
}

/* Whether topic (or filter) lies strictly below ctpl/v1/<vid>/<subtree>/. */
static bool is_below_own(const char *topic, const char *vid, const char *subtree)
{
	size_t root = strlen(TOPIC_ROOT), vlen = strlen(vid), slen = strlen(subtree);
	const char *rest = topic + root + vlen + 1;

	if(strncmp(topic, TOPIC_ROOT, root) != 0 || strncmp(topic + root, vid, vlen) != 0
			|| topic[root + vlen] != '/'){
		return false;
	}
	return strncmp(rest, subtree, slen) == 0 && rest[slen] == '/' && rest[slen + 1] != '\0';
}

/* What ctpl/v1/# covers: ctpl/v1 and anything below it (a filter may hold wildcards
 * from there on). */
static bool is_in_root(const char *topic)
{
	size_t root = strlen(TOPIC_ROOT);

	return strncmp(topic, TOPIC_ROOT, root) == 0 || strcmp(topic, "ctpl/v1") == 0;
}

/* ctpl/v1/<one level>/down/<one level>: where the cloud may write (no wildcards: a
 * PUBLISH topic never holds any, the broker checks that before this). */
static bool is_any_down(const char *topic)
{
	size_t root = strlen(TOPIC_ROOT);
	const char *vid = topic + root, *slash, *kind;

	if(strncmp(topic, TOPIC_ROOT, root) != 0 || (slash = strchr(vid, '/')) == NULL || slash == vid
			|| strncmp(slash, "/down/", 6) != 0){
		return false;
	}
	kind = slash + 6;
	return kind[0] != '\0' && strchr(kind, '/') == NULL;
}

static int car_may(const char *vid, int access, const char *topic)
{
	switch(access){
		case MOSQ_ACL_SUBSCRIBE:
			/* The agent subscribes to ctpl/v1/<vid>/down/# and nothing else. */
			return is_below_own(topic, vid, "down") ? MOSQ_ERR_PLUGIN_DEFER : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_PLUGIN_DEFER;
		case MOSQ_ACL_WRITE:
			return is_below_own(topic, vid, "up") || is_own(topic, vid, "presence")
				? MOSQ_ERR_PLUGIN_DEFER : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_READ:
			return is_below_own(topic, vid, "down") || is_own(topic, vid, "presence")
				? MOSQ_ERR_PLUGIN_DEFER : MOSQ_ERR_ACL_DENIED;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int cloud_may(int access, const char *topic)
{
	switch(access){
		case MOSQ_ACL_SUBSCRIBE:
			return is_in_root(topic)
				|| (strncmp(topic, CLOUD_SHARE, strlen(CLOUD_SHARE)) == 0
					&& is_in_root(topic + strlen(CLOUD_SHARE)))
				? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_WRITE:
			return is_any_down(topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_READ:
			return is_in_root(topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

/* ---- callbacks ------------------------------------------------------------------- */

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *who = mosquitto_client_username(ed->client);
	(void)event;
	(void)userdata;

	if(ed->topic == NULL){
		return MOSQ_ERR_ACL_DENIED;
	}
	switch(classify(who)){
		case ID_CAR:
			return car_may(who, ed->access, ed->topic);
		case ID_CLOUD:
			return cloud_may(ed->access, ed->topic);
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int refuse(const char *id, const char *cn, const char *why)
{
	mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "refused client id '%.64s' (certificate CN '%s'): %s",
			id ? id : "", cn, why);
	return MOSQ_ERR_AUTH;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	const char *username = mosquitto_client_username(ed->client);
	char cn[CN_MAX + 1];
	X509 *cert;
	int rc = MOSQ_ERR_SUCCESS;
	(void)event;
	(void)userdata;

	/* No certificate: refused. A live client always has one (require_certificate); on
	 * SIGHUP this also meets the durable sessions of offline cars, and refusing one of
	 * them leaves its subscriptions and queue as they are (tests/broker/test_revocation.py). */
	cert = mosquitto_client_certificate(ed->client);
	if(cert == NULL){
		return MOSQ_ERR_AUTH;
	}
	if(!common_name(cert, cn, sizeof(cn))){
		rc = refuse(id, "", "no usable CN");
	}else if(classify(cn) == ID_NONE){
		rc = refuse(id, cn, "the CN is neither a vid nor a cloud identity");
	}else if(id == NULL || strcmp(id, cn) != 0){
		rc = refuse(id, cn, "the client id is not the certificate's CN");
	}else if(revoked(cert)){
		rc = refuse(id, cn, "the certificate is revoked");
	}else if(username == NULL || strcmp(username, cn) != 0){
		rc = mosquitto_set_username(ed->client, cn) == MOSQ_ERR_SUCCESS ? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH;
	}
	X509_free(cert);
	return rc;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	if(read_crl()){
		STACK_OF(X509_REVOKED) *serials = X509_CRL_get_REVOKED(crl);
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "CRL %s reread: %d serial(s) revoked",
				crl_path, serials ? sk_X509_REVOKED_num(serials) : 0);
	}
	/* Never an error: it would stop Mosquitto's reload before the acl_file is reloaded. */
	return MOSQ_ERR_SUCCESS;
}

/* ---- plugin entry points --------------------------------------------------------- */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "crl_file") == 0){
			crl_path = mosquitto_strdup(options[i].value);
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "unknown option plugin_opt_%s", options[i].key);
			return MOSQ_ERR_INVAL;
		}
	}
	if(crl_path == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "plugin_opt_crl_file is required");
		return MOSQ_ERR_INVAL;
	}
	if(!read_crl()){
		return MOSQ_ERR_INVAL;
	}
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL)){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot register its callbacks");
		return MOSQ_ERR_UNKNOWN;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "loaded, CRL %s", crl_path);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	X509_CRL_free(crl);
	crl = NULL;
	mosquitto_free(crl_path);
	crl_path = NULL;
	return MOSQ_ERR_SUCCESS;
}
