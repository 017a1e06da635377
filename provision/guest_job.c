#include "provision/guest_job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int add_pair(struct al_tlv_buf *b, uint16_t tag, const struct env_pair *p)
{
    size_t n = strlen(p->name), v = strlen(p->value);
    _cleanup_free_ char *kv = malloc(n + 1 + v + 1);
    if (!kv)
        return -ENOMEM;
    memcpy(kv, p->name, n);
    kv[n] = '=';
    memcpy(kv + n + 1, p->value, v + 1);
    int r = al_tlv_add_str(b, tag, kv);
    explicit_bzero(kv, n + 1 + v);
    return r;
}

int guest_job_encode(const struct vm_request *req, struct al_tlv_buf *ret, struct al_error **err)
{
    struct al_tlv_buf b = {0};
    int r = al_tlv_add_str(&b, AL_TLV_VERSION, "1");
    if (r == 0)
        r = al_tlv_add_str(&b, AL_TLV_JOB_ID, req->job_id);
    if (r == 0 && req->script)
        r = al_tlv_add_str(&b, AL_TLV_SCRIPT, req->script);
    for (const char *const *a = req->argv; r == 0 && !req->script && a && *a; a++)
        r = al_tlv_add_str(&b, AL_TLV_ARGV, *a);
    for (size_t i = 0; r == 0 && i < req->n_env; i++)
        r = add_pair(&b, AL_TLV_ENV, &req->env[i]);
    if (r == 0 && req->timeout_s > 0)
        r = al_tlv_add_u64(&b, AL_TLV_TIMEOUT_S, (uint64_t)req->timeout_s);
    for (const char *const *a = req->artifacts; r == 0 && a && *a; a++)
        r = al_tlv_add_str(&b, AL_TLV_ARTIFACT, *a);
    if (r == 0 && req->max_artifact_bytes)
        r = al_tlv_add_u64(&b, AL_TLV_MAX_ARTIFACT_BYTES, req->max_artifact_bytes);
    if (r == 0 && req->workdir_tar)
        r = al_tlv_add_str(&b, AL_TLV_HAS_WORKDIR, "1");
    if (r == 0 && req->keep_running)
        r = al_tlv_add_str(&b, AL_TLV_POWEROFF, "0");
    if (r == 0 && !req->script && !(req->argv && req->argv[0]))
        r = -EINVAL;
    if (r < 0) {
        al_tlv_buf_free(&b);
        if (r == -EINVAL)
            return al_error_set(err, EINVAL, "the job has neither a command nor a script");
        return al_error_set(err, -r, "encoding the job for the guest%s",
                            r == -EMSGSIZE ? ": larger than a frame allows" : "");
    }
    *ret = b;
    return 0;
}

int guest_secrets_encode(const struct vm_request *req, struct al_tlv_buf *ret,
                         struct al_error **err)
{
    struct al_tlv_buf b = {0};
    int r = 0;
    for (size_t i = 0; r == 0 && i < req->n_secret_env; i++)
        r = add_pair(&b, AL_TLV_SECRET_ENV, &req->secret_env[i]);
    if (r < 0) {
        if (b.data)
            explicit_bzero(b.data, b.len);
        al_tlv_buf_free(&b);
        return al_error_set(err, -r, "encoding the job's secrets");
    }
    *ret = b;
    return 0;
}
