/* Reading yajl trees of outside documents with errors that name the path
 * ("steps[2].script: expected an array, got a string"), shared by the
 * parsers of forge payloads (GitLab jobs and registration answers, GitHub
 * webhooks and REST answers).
 * Messages name paths and types, never values: a value may be a secret. */
#ifndef AL_BASE_JSON_TREE_H
#define AL_BASE_JSON_TREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <yajl/yajl_tree.h>

#include "runner/base/error.h"
#include "runner/base/macro.h"

DEFINE_CLEANUP_FUNC(struct yajl_val_s, yajl_tree_free)

/* Bounds nesting and the number of values of a JSON text before yajl builds
 * a tree (whose size, and yajl_tree_free()'s recursion, follow both).
 * Strings are skipped with their escapes; anything malformed is left for
 * yajl to reject. what names the document in messages ("job payload"). */
int al_json_prescan(const char *data, size_t len, unsigned max_depth, size_t max_values,
                    const char *what, struct al_error **err);

/* Refuses a \u escape of a UTF-16 surrogate that is not the first half of
 * a high+low pair followed by its second half ("\ud800", "\udc00",
 * "\ud800\u0041"): yajl turns those into '?' or into bytes that are not
 * UTF-8, so the text would change silently. The message names the path of
 * the string ("env.HOME", "steps[2].script", or what at the top) and the
 * escape, never the value. Anything else malformed is left to the parser.
 * Returns 0 or -EINVAL. al_json_prescan() runs it too. */
int al_json_check_escapes(const char *data, size_t len, const char *what, struct al_error **err);

/* "a string", "an integer", ... for messages; "nothing" for NULL. */
const char *al_json_type_name(yajl_val v);

/* Sets err to EINVAL "PATH: MESSAGE" (or MESSAGE when path is empty) and
 * returns -EINVAL. */
_printf_(3, 4) int al_json_fail(struct al_error **err, const char *path, const char *fmt, ...);

/* path + "." + key, or path + "[idx]" when key is NULL, into buf; a path
 * that does not fit reads "(deep path)". Returns buf. */
const char *al_json_path(char *buf, size_t size, const char *path, const char *key, size_t idx);

/* The member key of the object obj into *ret, NULL when absent or null. A
 * key given twice is an error: two readers of the document could disagree
 * about it. */
int al_json_member(yajl_val obj, const char *key, const char *path, yajl_val *ret,
                   struct al_error **err);

/* Parses data (not NUL-terminated, at most max_bytes) into a tree after
 * al_json_prescan() with max_depth and max_values. The copy yajl parses is
 * wiped before it is freed: documents carry tokens. Messages name what and
 * the problem, never the bytes. The root may be of any type. */
int al_json_parse(const char *data, size_t len, size_t max_bytes, unsigned max_depth,
                  size_t max_values, const char *what, yajl_val *ret, struct al_error **err);

/* Typed getters of the member key of the object obj, whose path is path
 * ("" at the top). They all behave alike:
 *  - a key given twice is an error (al_json_member());
 *  - absent and null are the same thing: with required it is the error
 *    "PATH.key: missing", otherwise they return 0 and leave *ret as it was,
 *    so a default the caller put there stands;
 *  - a value of another type is the error "PATH.key: expected T, got U";
 *  - a value outside the bounds given is an error that names the bounds.
 * *ret is written only when the member is there and good. Errors are
 * -EINVAL, or -ENOMEM for the getters that copy. */
int al_json_get_int(yajl_val obj, const char *key, const char *path, int64_t min, int64_t max,
                    bool required, int64_t *ret, struct al_error **err);
int al_json_get_bool(yajl_val obj, const char *key, const char *path, bool required, bool *ret,
                     struct al_error **err);
/* *ret points into the tree. */
int al_json_get_object(yajl_val obj, const char *key, const char *path, bool required,
                       yajl_val *ret, struct al_error **err);
/* At most max elements; *ret points into the tree. */
int al_json_get_array(yajl_val obj, const char *key, const char *path, size_t max, bool required,
                      yajl_val *ret, struct al_error **err);

/* Says what is wrong with a string ("contains control characters") or returns
 * NULL when it is good. */
typedef const char *(*al_json_text_check)(const char *s);

/* A copy of a string of at most max bytes that check (may be NULL) finds
 * good; a required one must not be empty either. What *ret held before is
 * freed when the copy replaces it. */
int al_json_get_string(yajl_val obj, const char *key, const char *path, size_t max, bool required,
                       al_json_text_check check, char **ret, struct al_error **err);
/* A NULL-terminated copy of an array of at most max_n strings, each at most
 * max_len bytes that check (may be NULL) finds good, and its length into
 * *ret_n. Absent or null: *ret and *ret_n stay as they were (an empty array
 * gives an empty vector, not NULL). What *ret held before is freed. */
int al_json_get_strv(yajl_val obj, const char *key, const char *path, size_t max_n, size_t max_len,
                     bool required, al_json_text_check check, char ***ret, size_t *ret_n,
                     struct al_error **err);

/* Element idx of the array arr (path names it) into *ret, which must be an
 * object; its path goes into buf. */
int al_json_element_object(yajl_val arr, size_t idx, const char *path, char *buf, size_t size,
                           yajl_val *ret, struct al_error **err);

/* Text checks for al_json_get_string(): printable (no control characters,
 * spaces allowed), and printable without spaces. */
const char *al_json_check_line(const char *s);
const char *al_json_check_word(const char *s);

#endif
