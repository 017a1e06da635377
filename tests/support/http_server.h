/* A tiny HTTP/1.1 server for tests, on 127.0.0.1 with its own libuv loop in
 * a thread. Each response is delayed by delay_ms so concurrent clients
 * really overlap; connections close after one response. The body is
 * "path=PATH\n"; the status is 200 except for
 *   /status/NNN[?retry_after=S]  NNN (with Retry-After: S)
 *   /flaky                       429 with Retry-After: 1 the first time, then 200
 *   /auth                        200 with "Authorization: Bearer good", else 401 */
#ifndef AL_TEST_HTTP_SERVER_H
#define AL_TEST_HTTP_SERVER_H

#include <stddef.h>

struct test_http_server;

/* Starts the server; *ret_port receives the bound port. */
int test_http_server_start(unsigned delay_ms, struct test_http_server **ret, int *ret_port);
/* Stops the thread and frees everything. */
void test_http_server_stop(struct test_http_server *s);
/* Requests answered so far, and the most connections open at once. */
unsigned test_http_server_requests(struct test_http_server *s);
unsigned test_http_server_max_concurrent(struct test_http_server *s);

#endif
