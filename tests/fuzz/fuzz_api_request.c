/* libFuzzer target: the control API's request parser and router, fed the
 * way a connection feeds them (in pieces, pipelined requests one after the
 * other), with small limits so every limit path is reachable.
 * The first input byte picks the piece size. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runner/loop/http_request.h"
#include "runner/api/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int on_headers(struct http_req_parser *p, void *data, char *msg, size_t msg_size)
{
    (void)data;
    struct route_match m;
    route_match(p->req.method, p->req.path, &m);
    if (m.id == ROUTE_JOB_SUBMIT)
        http_req_parser_set_body(p, 4096, NULL, NULL);
    if (m.id == ROUTE_GC) {
        strncpy(msg, "refused", msg_size - 1);
        return 401;
    }
    return 0;
}

static void use_request(const struct http_request *r)
{
    struct route_match m;
    route_match(r->method, r->path, &m);
    (void)route_name(m.id);
    (void)route_is_public(m.id);
    if (m.id == ROUTE_JOB_ARTIFACT && !route_artifact_path_is_valid(m.artifact, strlen(m.artifact)))
        abort();
    if (m.job_id[0] && !route_job_id_is_valid(m.job_id, strlen(m.job_id)))
        abort();
    (void)http_request_query(r, "limit");
    (void)http_request_header(r, "authorization");
    for (size_t i = 0; i < r->n_query; i++) {
        if (!r->query[i].name || !r->query[i].value)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = (size_t)(data[0] % 64) + 1;
    const char *s = (const char *)data + 1;
    size_t len = size - 1;

    char *decoded = NULL;
    if (http_percent_decode(s, len < 256 ? len : 256, data[0] & 1, &decoded) == 0)
        free(decoded);

    struct http_limits lim = {.max_header_bytes = 2048, .max_headers = 16, .max_body = 1024};
    struct http_req_parser p;
    http_req_parser_init(&p, &lim, on_headers, NULL);
    size_t off = 0;
    int requests = 0;
    while (off < len && requests < 64) {
        size_t n = len - off < piece ? len - off : piece;
        size_t used = 0;
        enum http_req_status st = http_req_parser_feed(&p, s + off, n, &used);
        if (used > n)
            abort();
        off += used;
        if (st == HTTP_REQ_ERROR) {
            if (p.error_status < 400 || p.error_status > 599)
                abort();
            break;
        }
        if (st == HTTP_REQ_DONE) {
            use_request(&p.req);
            http_req_parser_next(&p);
            requests++;
        }
    }
    http_req_parser_free(&p);
    return 0;
}
