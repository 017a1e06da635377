/* libFuzzer target for what a Proxmox VE node answers: the reply envelope
 * (provision/pve_api.c), the JSON helpers every caller reads members with,
 * task UPIDs (provision/pve_task.c), and the guest runner's status output
 * that comes back through agent/exec-status (provision/pve_guest.c).
 *
 * The first input byte picks the HTTP status; the rest is the body. Beyond
 * "no crash, no sanitizer report" it checks the contract: a 2xx reply is a
 * tree with a data member or -EPROTO with a reason; any other status yields
 * a non-empty, terminated reason; parsed fields stay within their buffers.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "provision/pve_api.h"
#include "provision/pve_guest.h"
#include "provision/pve_task.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

/* The members the backend reads from task, status, node and exec replies. */
static const char *const keys[] = {
        "content",  "err-data",  "exitcode", "exited",   "exitstatus", "maxcpu", "maxmem",
        "mem",      "name",      "node",     "out-data", "pid",        "status", "tags",
        "template", "truncated", "type",     "vmid",     "upid",
};

static void read_strings(const char *s)
{
    if (!s)
        return;
    size_t len = strlen(s);
    struct pve_upid u;
    if (pve_upid_parse(s, &u) == 0) {
        check(memchr(u.node, '\0', sizeof(u.node)) != NULL);
        check(memchr(u.type, '\0', sizeof(u.type)) != NULL);
        check(memchr(u.id, '\0', sizeof(u.id)) != NULL);
    }
    struct pve_guest_status st;
    memset(&st, 0, sizeof(st));
    int r = pve_guest_status_parse(s, len, &st);
    check(r == 0 || r == -EINVAL);
    check(memchr(st.diag, '\0', sizeof(st.diag)) != NULL);
    check(memchr(st.missing, '\0', sizeof(st.missing)) != NULL);
}

static void read_object(yajl_val obj)
{
    if (!obj || !YAJL_IS_OBJECT(obj))
        return;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        int64_t n;
        bool b;
        (void)pve_json_int(obj, keys[i], &n);
        (void)pve_json_bool(obj, keys[i], &b);
        (void)pve_json_get(obj, keys[i]);
        read_strings(pve_json_str(obj, keys[i]));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const long statuses[] = {200, 201, 204, 400, 401, 403, 500, 501, 595, 596};
    if (size < 1)
        return 0;
    long status = statuses[data[0] % (sizeof(statuses) / sizeof(statuses[0]))];
    /* bodies arrive NUL-terminated (curl sink); embedded NULs are refused */
    char *body = malloc(size);
    check(body != NULL);
    memcpy(body, data + 1, size - 1);
    body[size - 1] = '\0';

    yajl_val tree = NULL, d = NULL;
    char msg[512];
    int r = pve_reply_parse(status, "Reason Phrase", body, size - 1, &tree, &d, msg, sizeof(msg));
    check(memchr(msg, '\0', sizeof(msg)) != NULL);
    if (status >= 200 && status < 300) {
        check(r == 0 || r == -EPROTO);
        if (r < 0) {
            check(tree == NULL && msg[0]);
        } else {
            check(tree != NULL);
            if (d && YAJL_IS_OBJECT(d)) {
                read_object(d);
            } else if (d && YAJL_IS_ARRAY(d)) {
                for (size_t i = 0; i < d->u.array.len && i < 64; i++)
                    read_object(d->u.array.values[i]);
            } else if (d && YAJL_IS_STRING(d)) {
                read_strings(d->u.string);
            }
            yajl_tree_free(tree);
        }
    } else {
        check(r == 0 && tree == NULL && msg[0]);
        (void)pve_message_is_lock_timeout(msg);
    }
    /* the guest status parser on the raw bytes too (exec out-data) */
    read_strings(body);
    free(body);
    return 0;
}
