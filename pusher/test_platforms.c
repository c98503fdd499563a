/*
 * test_platforms.c: jwt.c, fcm.c and apns.c without the network: the RS256
 * grant verifies with the service account's public key and carries the
 * claims Google checks, the token answer and the "gone" answers are read
 * strictly, and the FCM and APNs JSON carry collapse keys and badges.
 * Run by `make -C pusher test`; exits non-zero when a check fails.
 */
#include "apns.h"
#include "fcm.h"
#include "jwt.h"
#include "webpush.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

static int	failures = 0;

/* Records a failed check. */
static void
Check(int ok, const char *what)
{
	printf("%s: %s\n", ok ? "ok" : "FAIL", what);
	if (!ok)
		failures++;
}

/* Whether jwt (header.claims.sig) verifies with key; claims decoded into *claims. */
static int
Verify(const char *jwt, EVP_PKEY *key, json_t **claims)
{
	const char *dot1 = strchr(jwt, '.'),
			   *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	unsigned char sig[1024],
				raw[1024];
	int			siglen,
				n,
				ok = 0;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	char		part[2048];

	*claims = NULL;
	if (dot2 == NULL || (size_t) (dot2 - dot1 - 1) >= sizeof(part))
		goto done;
	memcpy(part, dot1 + 1, dot2 - dot1 - 1);
	part[dot2 - dot1 - 1] = '\0';
	n = b64url_decode(part, raw, sizeof(raw) - 1);
	if (n < 0)
		goto done;
	raw[n] = '\0';
	*claims = json_loads((char *) raw, 0, NULL);
	siglen = b64url_decode(dot2 + 1, sig, sizeof(sig));
	if (siglen < 0)
		goto done;
	if (EVP_PKEY_is_a(key, "EC"))
	{
		/* r || s back to DER for OpenSSL */
		ECDSA_SIG  *es = ECDSA_SIG_new();
		unsigned char *der = NULL;
		int			der_len;

		ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
		der_len = i2d_ECDSA_SIG(es, &der);
		ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
			EVP_DigestVerify(md, der, der_len, (const unsigned char *) jwt, dot2 - jwt) == 1;
		OPENSSL_free(der);
		ECDSA_SIG_free(es);
	}
	else
		ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
			EVP_DigestVerify(md, sig, siglen, (const unsigned char *) jwt, dot2 - jwt) == 1;
done:
	EVP_MD_CTX_free(md);
	return ok;
}

/* Writes text to a new temporary file; its path (static). */
static const char *
TempFile(const char *text)
{
	static char path[64];
	FILE	   *f;
	int			fd;

	strcpy(path, "/tmp/test_platforms.XXXXXX");
	fd = mkstemp(path);
	f = fdopen(fd, "w");
	fputs(text, f);
	fclose(f);
	return path;
}

/* The service account file, the grant and the token answer. */
static void
TestFcmAuth(void)
{
	EVP_PKEY   *rsa = EVP_RSA_gen(2048);
	BIO		   *bio = BIO_new(BIO_s_mem());
	char	   *pem,
			   *body,
				err[256];
	long		pem_len;
	json_t	   *sa,
			   *claims = NULL;
	char	   *sa_text;
	const char *path;
	FcmAccount	a;
	char	   *token = NULL;
	long		expires = 0;

	PEM_write_bio_PrivateKey(bio, rsa, NULL, NULL, 0, NULL, NULL);
	pem_len = BIO_get_mem_data(bio, &pem);
	sa = json_pack("{s:s,s:s,s:s#,s:s}", "type", "service_account", "project_id", "p-1",
				   "private_key", pem, (size_t) pem_len, "client_email", "x@p-1.iam.gserviceaccount.com");
	sa_text = json_dumps(sa, 0);
	path = TempFile(sa_text);
	Check(fcm_load_account(path, &a, err, sizeof(err)) == 0, "a service account loads");
	unlink(path);
	Check(a.token_uri != NULL && !strcmp(a.token_uri, FCM_DEFAULT_TOKEN_URI), "token_uri defaults to Google's");
	body = fcm_grant_body(&a, "https://t.example/token", 1700000000);
	Check(body != NULL && !strncmp(body, "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=", 75),
		  "the grant is the jwt-bearer form");
	Check(body != NULL && Verify(strstr(body, "assertion=") + 10, rsa, &claims), "the assertion verifies (RS256) with the account's key");
	Check(claims != NULL && !strcmp(json_string_value(json_object_get(claims, "aud")), "https://t.example/token") &&
		  !strcmp(json_string_value(json_object_get(claims, "iss")), "x@p-1.iam.gserviceaccount.com") &&
		  !strcmp(json_string_value(json_object_get(claims, "scope")), FCM_SCOPE) &&
		  json_integer_value(json_object_get(claims, "iat")) == 1700000000 &&
		  json_integer_value(json_object_get(claims, "exp")) == 1700003600, "claims iss, scope, aud, iat, exp = iat + 1 h");
	json_decref(claims);
	free(body);
	fcm_free_account(&a);

	Check(fcm_parse_token("{\"access_token\":\"ya29.a-b_c\",\"expires_in\":3599,\"token_type\":\"Bearer\"}", &token, &expires) == 0 &&
		  !strcmp(token, "ya29.a-b_c") && expires == 3599, "a token answer is read");
	free(token);
	Check(fcm_parse_token("{\"access_token\":\"a\\r\\nX-Evil: 1\",\"expires_in\":10}", &token, &expires) != 0,
		  "a token with a line break is refused (header injection)");
	Check(fcm_parse_token("{\"access_token\":\"a\",\"expires_in\":\"10\"}", &token, &expires) != 0, "expires_in must be a number");
	Check(fcm_parse_token("{\"error\":\"invalid_grant\"}", &token, &expires) != 0, "an error answer is no token");
	Check(fcm_parse_token("not json", &token, &expires) != 0, "not JSON is no token");

	/* Bad files. */
	json_object_set_new(sa, "type", json_string("authorized_user"));
	free(sa_text);
	sa_text = json_dumps(sa, 0);
	path = TempFile(sa_text);
	Check(fcm_load_account(path, &a, err, sizeof(err)) != 0 && strstr(err, "service_account"), "type must be service_account");
	unlink(path);
	json_object_set_new(sa, "type", json_string("service_account"));
	json_object_set_new(sa, "private_key", json_string("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"));
	free(sa_text);
	sa_text = json_dumps(sa, 0);
	path = TempFile(sa_text);
	Check(fcm_load_account(path, &a, err, sizeof(err)) != 0 && strstr(err, "RSA"), "private_key must be an RSA PEM key");
	unlink(path);
	json_object_set_new(sa, "project_id", json_string("p/../x"));
	free(sa_text);
	sa_text = json_dumps(sa, 0);
	path = TempFile(sa_text);
	Check(fcm_load_account(path, &a, err, sizeof(err)) != 0, "a project_id with a slash is refused (it goes in the URL)");
	unlink(path);
	Check(fcm_load_account("/nonexistent/sa.json", &a, err, sizeof(err)) != 0, "a missing file is an error");
	free(sa_text);
	json_decref(sa);
	BIO_free(bio);
	EVP_PKEY_free(rsa);
}

/* The FCM message and its gone answers. */
static void
TestFcmMessage(void)
{
	char	   *m = fcm_message("tok", "c7", "{\"type\":\"message\",\"conversation\":7,\"seq\":9,\"first_seq\":3,"
								"\"sender\":2,\"unread\":4,\"body\":\"hi\"}", 60);
	json_t	   *j = m ? json_loads(m, 0, NULL) : NULL;
	json_t	   *exp = json_loads("{\"message\":{\"token\":\"tok\",\"data\":{\"type\":\"message\",\"conversation\":\"7\","
								 "\"seq\":\"9\",\"first_seq\":\"3\",\"sender\":\"2\",\"unread\":\"4\",\"body\":\"hi\"},"
								 "\"android\":{\"collapse_key\":\"c7\",\"priority\":\"high\",\"ttl\":\"60s\","
								 "\"notification\":{\"title\":\"New message\",\"tag\":\"c7\",\"notification_count\":4,"
								 "\"body\":\"hi\"}},\"apns\":{\"headers\":{\"apns-collapse-id\":\"c7\"},"
								 "\"payload\":{\"aps\":{\"badge\":4}}}}}", 0, NULL);

	Check(j != NULL && json_equal(j, exp), "the FCM message: string data, collapse_key, ttl, badge");
	json_decref(j);
	json_decref(exp);
	free(m);
	Check(fcm_message("tok", "c7", "[1]", 60) == NULL, "a payload that is not an object makes no message");
	Check(fcm_unregistered(404, NULL), "404 is gone");
	Check(fcm_unregistered(400, "{\"error\":{\"details\":[{\"errorCode\":\"UNREGISTERED\"}]}}"), "UNREGISTERED is gone");
	Check(!fcm_unregistered(400, "{\"error\":{\"details\":[{\"errorCode\":\"INVALID_ARGUMENT\"}]}}"), "INVALID_ARGUMENT is not");
	Check(!fcm_unregistered(503, "garbage"), "503 is not");
	Check(!fcm_unregistered(200, NULL), "200 is not");
}

/* The APNs provider token, payload and answers. */
static void
TestApns(void)
{
	EVP_PKEY   *key = wp_generate_key();
	char		jwt[1024];
	json_t	   *claims = NULL,
			   *j,
			   *exp;
	char	   *p;

	Check(apns_provider_token(key, "KEY1234567", "TEAM123456", 1700000000, jwt, sizeof(jwt)) == 0, "a provider token is made");
	Check(Verify(jwt, key, &claims), "it verifies (ES256) with the auth key");
	Check(claims != NULL && !strcmp(json_string_value(json_object_get(claims, "iss")), "TEAM123456") &&
		  json_integer_value(json_object_get(claims, "iat")) == 1700000000, "claims iss = team, iat");
	Check(!strncmp(jwt, "eyJhbGciOiJFUzI1NiIsImtpZCI6IktFWTEyMzQ1NjcifQ.", 47), "header {alg: ES256, kid}");
	json_decref(claims);
	Check(APNS_TOKEN_REFRESH_S >= 1200 && APNS_TOKEN_REFRESH_S < 3600, "refreshed within the hour, not within 20 minutes");
	p = apns_payload("c7", "{\"type\":\"message\",\"conversation\":7,\"seq\":9,\"sender\":2,\"unread\":4}");
	j = p ? json_loads(p, 0, NULL) : NULL;
	exp = json_loads("{\"aps\":{\"alert\":{\"title\":\"New message\"},\"badge\":4,\"thread-id\":\"c7\","
					 "\"mutable-content\":1,\"sound\":\"default\"},\"type\":\"message\",\"conversation\":7,"
					 "\"seq\":9,\"sender\":2,\"unread\":4}", 0, NULL);
	Check(j != NULL && json_equal(j, exp), "the APNs payload without a preview: badge, thread-id, no body");
	json_decref(j);
	json_decref(exp);
	free(p);
	Check(apns_unregistered(410, NULL), "410 is gone");
	Check(apns_unregistered(400, "{\"reason\":\"BadDeviceToken\"}"), "400 BadDeviceToken is gone");
	Check(!apns_unregistered(400, "{\"reason\":\"PayloadTooLarge\"}"), "400 PayloadTooLarge is not");
	Check(!apns_unregistered(400, "nonsense"), "400 without JSON is not");
	Check(apns_token_refused(403, "{\"reason\":\"ExpiredProviderToken\"}"), "403 ExpiredProviderToken refuses the token");
	Check(!apns_token_refused(403, "{\"reason\":\"BadTopic\"}"), "403 BadTopic does not");
	EVP_PKEY_free(key);
	key = EVP_RSA_gen(1024);
	Check(apns_provider_token(key, "K", "T", 1, jwt, sizeof(jwt)) != 0, "an RSA key is no APNs key");
	EVP_PKEY_free(key);
}

/* Runs the checks. */
int
main(void)
{
	TestFcmAuth();
	TestFcmMessage();
	TestApns();
	if (failures)
	{
		printf("%d platform checks FAILED\n", failures);
		return 1;
	}
	printf("all platform checks passed\n");
	return 0;
}
