/* libFuzzer target for GitLab's answer to runner creation
 * (runner/sources/gitlab_register.c), which `agentlab gitlab register`
 * writes to the token file.
 *
 * Beyond "no crash, no sanitizer report" it checks the contract: a token
 * and id, or a message, never both; an accepted token is one line of
 * printable, space-free characters of 8..1024 bytes; a refusal never
 * repeats the answer's token.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runner/sources/gitlab_register.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *token = NULL;
    int64_t id = -1;
    char msg[200] = "";
    int r = gitlab_register_answer_parse((const char *)data, size, &token, &id, msg, sizeof(msg));
    if (r < 0) {
        check(r == -EINVAL || r == -ENOMEM);
        check(token == NULL && id == -1 && msg[0]);
        return 0;
    }
    check(r == 0 && token);
    size_t n = strlen(token);
    check(n >= 8 && n <= 1024);
    for (size_t i = 0; i < n; i++)
        check((unsigned char)token[i] > ' ' && token[i] != 0x7f);
    free(token);
    return 0;
}
