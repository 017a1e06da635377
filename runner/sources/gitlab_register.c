#include "runner/sources/gitlab_register.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "runner/base/json_tree.h"

#define ANSWER_MAX (64u * 1024u)

int gitlab_register_answer_parse(const char *body, size_t len, char **ret_token, int64_t *ret_id,
                                 char *msg, size_t msg_size)
{
    if (!body || len > ANSWER_MAX || memchr(body, '\0', len) ||
        al_json_check_escapes(body, len, "answer", NULL) < 0) {
        snprintf(msg, msg_size, "GitLab's answer is not a JSON object");
        return -EINVAL;
    }
    /* yajl_tree_parse wants a C string */
    char *text = strndup(body, len);
    if (!text) {
        snprintf(msg, msg_size, "out of memory");
        return -ENOMEM;
    }
    char ebuf[128];
    yajl_val root = yajl_tree_parse(text, ebuf, sizeof(ebuf));
    free(text);
    if (!root || !YAJL_IS_OBJECT(root)) {
        snprintf(msg, msg_size, "GitLab's answer is not a JSON object");
        yajl_tree_free(root);
        return -EINVAL;
    }
    const char *tp[] = {"token", NULL}, *ip[] = {"id", NULL};
    yajl_val tok = yajl_tree_get(root, tp, yajl_t_string);
    yajl_val id = yajl_tree_get(root, ip, yajl_t_number);
    int r = 0;
    if (!tok || !id || !YAJL_IS_INTEGER(id)) {
        snprintf(msg, msg_size, "GitLab's answer has no runner id and token");
        r = -EINVAL;
    } else {
        const char *t = YAJL_GET_STRING(tok);
        size_t n = strlen(t);
        /* it becomes one line of a file and an HTTP header value */
        bool ok = n >= 8 && n <= 1024;
        for (size_t i = 0; i < n && ok; i++)
            ok = (unsigned char)t[i] > ' ' && t[i] != 0x7f;
        if (!ok) {
            snprintf(msg, msg_size, "GitLab's answer has a malformed runner token");
            r = -EINVAL;
        } else if (!(*ret_token = strdup(t))) {
            snprintf(msg, msg_size, "out of memory");
            r = -ENOMEM;
        } else {
            *ret_id = YAJL_GET_INTEGER(id);
        }
    }
    yajl_tree_free(root);
    return r;
}
