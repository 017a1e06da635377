#include "runner/api/status_page.h"

/* Generated from status_page.html by runner/api/embed.cmake. */
extern const char al_status_page_html[];
extern const unsigned long al_status_page_html_len;

const char *status_page_html(size_t *ret_len)
{
    *ret_len = (size_t)al_status_page_html_len;
    return al_status_page_html;
}
