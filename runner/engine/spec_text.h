/* Private to the job-spec parser (spec_parse.c): checks on the text of
 * values, and the quoting of values in error messages with every secret of
 * the document masked. Nothing outside runner/engine/spec*.c includes it. */
#ifndef AL_SPEC_TEXT_H
#define AL_SPEC_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* No C0/C1 control characters and no DEL in s[0..len) (valid UTF-8). */
bool spec_is_printable(const unsigned char *s, size_t len);

/* Object names (images, pools, labels): [A-Za-z0-9][A-Za-z0-9._-]{0,62},
 * like config_name_is_valid() but on a counted, unterminated string. */
bool spec_name_is_valid(const char *s, size_t len);

/* A relative path without ".." components, or an absolute guest path. */
bool spec_artifact_path_is_valid(const char *s);

/* Secret values of the document being parsed, longest first. They are
 * collected only once a document has failed (see job_spec_parse()): a
 * message about one field must not repeat a secret given in another. */
struct spec_doc_secrets {
    char **values;
    size_t n;
};

/* A copy of s[0..len) with every registered secret and every secret of doc
 * (may be NULL) masked, its length in *ret_len; NULL when out of memory. */
char *spec_mask_secrets(const struct spec_doc_secrets *doc, const char *s, size_t len,
                        size_t *ret_len);

/* Writes in[0..in_len) to buf (at least 8 bytes, else untouched) as a
 * quoted, escaped string of at most 40 shown bytes for messages, secrets
 * masked before it is shortened or escaped (either would hide a secret from
 * a later search). */
void spec_quote(const struct spec_doc_secrets *doc, char *buf, size_t size, const char *in,
                size_t in_len);

/* Fills *ret_doc with every string value of the top-level secret_env object
 * that data[0..len) holds before its first syntax error, whatever else is
 * wrong with it. Returns 0 or -ENOMEM. */
int spec_doc_secrets_collect(const char *data, size_t len, struct spec_doc_secrets *ret_doc);

/* Wipes and frees the values; leaves *doc empty. */
void spec_doc_secrets_done(struct spec_doc_secrets *doc);

#endif
