/*
 * media.c: the extension's side of attachments (32_media.sql): the media
 * GUCs, the signing of media URLs (chat.media_sign) and the attachment check
 * of the send path (SendAttachments).
 *
 * URLs are signed with HMAC-SHA256 under HMAC(chat.token_secret,
 * "chat-media"): a key of its own, so a media URL's MAC is never a valid
 * token or notification MAC, and the byte server, which has the token
 * secret, derives the same key without asking the database.
 */
#include "chat.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

PG_FUNCTION_INFO_V1(chat_media_sign);

/* Most attachments one message carries. */
#define CHAT_MAX_ATTACHMENTS 10

static char *chat_media_limits;
static char *chat_media_types;
static char *chat_media_url_prefix;
static int	chat_media_url_ttl;
static int	chat_media_upload_timeout;

static SPIPlanPtr attachments_plan;
static SPIPlanPtr attach_plan;

/* Defines the media GUCs (called by _PG_init). */
void
MediaDefineGucs(void)
{
	DefineCustomStringVariable("chat.media_limits",
							   "Largest upload per media class, in bytes (a JSON object).",
							   "Classes: image, video, voice (audio/*), document (the rest).",
							   &chat_media_limits,
							   "{\"image\": 16777216, \"video\": 104857600, \"voice\": 10485760, "
							   "\"document\": 104857600}",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("chat.media_types",
							   "MIME types accepted for upload (comma-separated).",
							   NULL, &chat_media_types,
							   "image/jpeg,image/png,image/gif,image/webp,"
							   "video/mp4,video/webm,video/quicktime,"
							   "audio/ogg,audio/mpeg,audio/mp4,audio/webm,audio/wav,"
							   "application/pdf,text/plain,application/zip,application/octet-stream",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("chat.media_url_prefix",
							   "What media URLs start with: the byte server's origin and path.",
							   "Relative (\"/media\") when it is served from the gateway's origin.",
							   &chat_media_url_prefix, "/media",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.media_url_ttl",
							"How long a signed upload or download URL stays valid, in seconds.",
							NULL, &chat_media_url_ttl, 300, 10, 86400,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.media_upload_timeout",
							"Seconds after which uploads still pending are removed by chat.media_cleanup.",
							NULL, &chat_media_upload_timeout, 3600, 60, 7 * 86400,
							PGC_SUSET, 0, NULL, NULL, NULL);
}

/* chat.media_sign(msg text) RETURNS text: hex HMAC-SHA256 of msg under
 * HMAC(chat.token_secret, "chat-media"); 55000 when no secret is set. */
Datum
chat_media_sign(PG_FUNCTION_ARGS)
{
	text	   *msg = PG_GETARG_TEXT_PP(0);
	unsigned char key[EVP_MAX_MD_SIZE];
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int keylen = 0;
	unsigned int maclen = 0;
	char		hex[2 * EVP_MAX_MD_SIZE + 1];
	unsigned int i;

	if (chat_token_secret == NULL || chat_token_secret[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("chat.token_secret is not set: media URLs cannot be signed"),
				 errhint("Set chat.token_secret in postgresql.conf to the secret of the media server's --token-secret-file and reload.")));
	if (HMAC(EVP_sha256(), chat_token_secret, strlen(chat_token_secret),
			 (const unsigned char *) "chat-media", 10, key, &keylen) == NULL ||
		HMAC(EVP_sha256(), key, keylen, (const unsigned char *) VARDATA_ANY(msg),
			 VARSIZE_ANY_EXHDR(msg), mac, &maclen) == NULL)
		elog(ERROR, "chat: HMAC-SHA256 failed");
	for (i = 0; i < maclen; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(hex, 2 * maclen));
}

/*
 * The attachments of a send (a jsonb array of upload ids): checks that each
 * is a ready upload of the sender to this conversation not yet sent, and
 * returns their JSON for the message ([{id, mime, size, name, width,
 * height, thumbnail}], in the given order).  Raises 22023 for a bad list
 * and, in an e2e send, for a file that is not application/octet-stream
 * without a name,
 * P0002 for an id that is not an upload of the sender here, 55000 for one
 * not ready or already sent.  Caller is connected to SPI and holds the
 * conversation row lock, which serialises two sends of one upload.
 */
char *
SendAttachments(const SendArgs *a)
{
	Oid			types[3] = {INT8OID, INT8OID, JSONBOID};
	Datum		args[3] = {Int64GetDatum(a->sender), Int64GetDatum(a->conversation_id),
	PointerGetDatum(a->attachments)};
	bool		isnull;
	int64		n,
				missing,
				pending,
				sent,
				distinct;
	Datum		d;

	n = JB_ROOT_COUNT(a->attachments);
	if (!JB_ROOT_IS_ARRAY(a->attachments) || JB_ROOT_IS_SCALAR(a->attachments) ||
		n < 1 || n > CHAT_MAX_ATTACHMENTS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("attachments must be an array of 1 to %d upload ids", CHAT_MAX_ATTACHMENTS)));
	ChatPrepare(&attachments_plan,
		"WITH ids AS (SELECT t.value::uuid AS id, t.ord"
		"               FROM jsonb_array_elements_text($3) WITH ORDINALITY AS t(value, ord))"
		" SELECT count(*) FILTER (WHERE a.id IS NULL),"
		"        count(*) FILTER (WHERE a.state <> 'ready'),"
		"        count(*) FILTER (WHERE a.message_seq IS NOT NULL),"
		"        count(DISTINCT ids.id),"
		"        jsonb_agg(jsonb_strip_nulls(jsonb_build_object('id', a.id, 'mime', a.mime,"
		"            'size', a.size, 'name', a.name, 'width', a.width, 'height', a.height,"
		"            'duration_ms', a.duration_ms, 'thumbnail', a.thumbnail_key IS NOT NULL))"
		"          ORDER BY ids.ord)::text,"
		"        count(*) FILTER (WHERE a.mime <> 'application/octet-stream' OR a.name IS NOT NULL)"
		"   FROM ids LEFT JOIN chat.attachments a"
		"     ON a.id = ids.id AND a.owner_id = $1 AND a.conversation_id = $2",
		3, types);
	/*
	 * Not read-only: a fresh snapshot, taken after the conversation row lock
	 * was granted, sees a send of the same upload that committed while we
	 * waited (a read-only query would use the older snapshot and let two
	 * messages carry one upload).
	 */
	ChatExecute(attachments_plan, args, NULL, false, 1, SPI_OK_SELECT, "attachments lookup");
	missing = ChatSpiInt64(0, 1, &isnull);
	pending = ChatSpiInt64(0, 2, &isnull);
	sent = ChatSpiInt64(0, 3, &isnull);
	distinct = ChatSpiInt64(0, 4, &isnull);
	if (distinct != n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("attachments list an upload more than once")));
	if (missing > 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("%d of the attachments are not uploads of user " INT64_FORMAT
						" to conversation " INT64_FORMAT, (int) missing, a->sender,
						a->conversation_id),
				 errhint("Announce each file with upload in this conversation first.")));
	if (pending > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%d of the attachments are not uploaded yet", (int) pending),
				 errhint("Send after the PUT of each file has answered 201.")));
	if (sent > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%d of the attachments were sent already", (int) sent),
				 errhint("Upload the file again to send it in another message.")));
	/*
	 * E2E (30_e2e.sql): an encrypted message carries encrypted files only,
	 * opaque bytes without a name (their type and name travel in the
	 * ciphertext), also those announced before the switch to e2e.
	 */
	if (a->kind != NULL && strcmp(a->kind, "e2e") == 0 && ChatSpiInt64(0, 6, &isnull) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%d of the attachments of an e2e message are not encrypted files",
						(int) ChatSpiInt64(0, 6, &isnull)),
				 errhint("Upload each file encrypted, as application/octet-stream without a name.")));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull);
	return TextDatumGetCString(d);
}

/* Binds the attachments of a send to the message written at seq.  Caller
 * is connected to SPI. */
void
AttachToMessage(const SendArgs *a, int64 seq)
{
	Oid			types[3] = {INT8OID, INT8OID, JSONBOID};
	Datum		args[3] = {Int64GetDatum(a->conversation_id), Int64GetDatum(seq),
	PointerGetDatum(a->attachments)};

	ChatPrepare(&attach_plan,
		"UPDATE chat.attachments SET message_seq = $2"
		" WHERE conversation_id = $1"
		"   AND id IN (SELECT t::uuid FROM jsonb_array_elements_text($3) AS t)",
		3, types);
	ChatExecute(attach_plan, args, NULL, false, 0, SPI_OK_UPDATE, "attachments update");
}
