/* GitLab's answer to POST /api/v4/user/runners (`agentlab gitlab register`):
 * the new runner's id and authentication token, checked before anything is
 * written to the token file. */
#ifndef AL_GITLAB_REGISTER_H
#define AL_GITLAB_REGISTER_H

#include <stddef.h>
#include <stdint.h>

/* Parses a 201 answer body of len bytes (a NUL inside refuses it). On
 * success *ret_token is the runner token (caller frees and wipes it) and
 * *ret_id its id. Returns 0, -EINVAL (msg says what is wrong, never the
 * token) or -ENOMEM. */
int gitlab_register_answer_parse(const char *body, size_t len, char **ret_token, int64_t *ret_id,
                                 char *msg, size_t msg_size);

#endif
