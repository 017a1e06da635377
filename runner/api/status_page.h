/* The status page served at GET /: one self-contained HTML document (inline
 * CSS and JavaScript, no external assets). Its source is
 * runner/api/status_page.html, embedded at build time by CMake.
 *
 * The page holds no data itself; its script reads /v1/status and the job
 * endpoints with the bearer token the operator gives it in the URL fragment
 * (#token=..., never sent to the server in a request line) or in its form.
 */
#ifndef AL_API_STATUS_PAGE_H
#define AL_API_STATUS_PAGE_H

#include <stddef.h>

/* The page and its length in bytes. Static storage. */
const char *status_page_html(size_t *ret_len);

#endif
