/* GitLab job payloads for the unit tests of the GitLab source: a document
 * shaped like GitLab's POST /api/v4/jobs/request answer with the parts under
 * test filled in, and its parse. */
#ifndef AL_TEST_GITLAB_PAYLOAD_H
#define AL_TEST_GITLAB_PAYLOAD_H

#include <stddef.h>

#include "runner/sources/gitlab_job.h"

#define TOKEN  "glcbt-64_Zz9TestJobTokenXyz"
#define SECRET "masked-value-0123456789"
#define SHA    "0123456789abcdef0123456789abcdef01234567"

#define STEP_SCRIPT(lines)                                                                         \
    "{\"name\": \"script\", \"script\": [" lines "], \"timeout\": 1800, \"when\": \"on_success\"," \
    " \"allow_failure\": false}"
#define STEP_AFTER(lines)                                                                 \
    "{\"name\": \"after_script\", \"script\": [" lines "], \"timeout\": 1800, \"when\": " \
    "\"always\", \"allow_failure\": true}"

/* The payload with image (a JSON value), variables, steps, artifacts and
 * dependencies (the insides of their JSON arrays). */
char *payload_image(const char *image, const char *variables, const char *steps,
                    const char *artifacts, const char *dependencies);
/* The same with the image debian-12. */
char *payload_with(const char *variables, const char *steps, const char *artifacts,
                   const char *dependencies);
/* The same without dependencies. */
char *payload(const char *variables, const char *steps, const char *artifacts);

/* doc parsed, or the test fails with the reason. */
struct gitlab_job *parse_ok(const char *doc);
/* The error message of a parse that must return want (a negative errno). */
char *parse_err(const char *doc, size_t len, int want);

#endif
