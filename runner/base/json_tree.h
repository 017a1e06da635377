/* Reading yajl trees of outside documents with errors that name the path
 * ("steps[2].script: expected an array, got a string"), shared by the
 * parsers of forge payloads (GitLab jobs, GitHub webhooks and answers).
 * Messages name paths and types, never values: a value may be a secret. */
#ifndef AL_BASE_JSON_TREE_H
#define AL_BASE_JSON_TREE_H

#include <stddef.h>
#include <yajl/yajl_tree.h>

#include "runner/base/error.h"
#include "runner/base/macro.h"

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

#endif
