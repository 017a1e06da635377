#include "runner/sources/gitlab_register.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "runner/base/json_tree.h"
#include "runner/base/macro.h"

#define ANSWER_MAX        (64u * 1024u)
#define ANSWER_MAX_DEPTH  32
#define ANSWER_MAX_VALUES 4096

int gitlab_register_answer_parse(const char *body, size_t len, char **ret_token, int64_t *ret_id,
                                 char *msg, size_t msg_size)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = body ? al_json_parse(body, len, ANSWER_MAX, ANSWER_MAX_DEPTH, ANSWER_MAX_VALUES,
                                 "answer", &root, NULL)
                 : -EINVAL;
    if (r == -ENOMEM) {
        snprintf(msg, msg_size, "out of memory");
        return r;
    }
    if (r < 0 || !YAJL_IS_OBJECT(root)) {
        snprintf(msg, msg_size, "GitLab's answer is not a JSON object");
        return -EINVAL;
    }
    _cleanup_free_ char *token = NULL;
    int64_t id = 0;
    r = al_json_get_int(root, "id", "", INT64_MIN, INT64_MAX, true, &id, NULL);
    if (r == 0)
        r = al_json_get_string(root, "token", "", SIZE_MAX, true, NULL, &token, NULL);
    if (r == -ENOMEM) {
        snprintf(msg, msg_size, "out of memory");
        return r;
    }
    if (r < 0) {
        snprintf(msg, msg_size, "GitLab's answer has no runner id and token");
        return -EINVAL;
    }
    /* it becomes one line of a file and an HTTP header value */
    size_t n = strlen(token);
    if (n < 8 || n > 1024 || al_json_check_word(token)) {
        explicit_bzero(token, n);
        snprintf(msg, msg_size, "GitLab's answer has a malformed runner token");
        return -EINVAL;
    }
    *ret_token = TAKE_PTR(token);
    *ret_id = id;
    return 0;
}
