#include "provision/pve_guest.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"

/* POSIX sh (dash): no bashisms, no "--" for kill, nothing that reads stdin
 * (the script itself arrives on stdin). */
static const char runner[] =
        "# agentlab job runner for Proxmox guests (provision/pve_guest.h)\n"
        "set -u\n"
        "P=$1 R=$2 T=$3\n"
        "shift 3\n"
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "export PATH\n"
        "umask 022\n"
        "say() { printf 'agentlab-%s\\n' \"$*\"; }\n"
        "size() { if [ -f \"$1\" ]; then echo $(($(wc -c <\"$1\"))); else echo 0; fi; }\n"
        "bail() {\n"
        "    say \"diag $*\"\n"
        "    say \"status ok=0 exit=125 timedout=0 out=$(size \"$R/out\") err=$(size \"$R/err\") "
        "art=0 artrc=0\"\n"
        "    exit 0\n"
        "}\n"
        "join() {\n"
        "    j=$P.$1\n"
        "    set -- \"$j\".[0-9][0-9][0-9]\n"
        "    [ -e \"$1\" ] || return 1\n"
        "    cat -- \"$@\" >\"$j\" || return 2\n"
        "    rm -f -- \"$@\"\n"
        "}\n"
        "case $R in /?*/?*) ;; *) bail \"bad work root $R\" ;; esac\n"
        "case $T in '' | *[!0-9]*) bail \"bad timeout $T\" ;; esac\n"
        "U=$(id -un) RUN=\n"
        "if [ \"$(id -u)\" = 0 ] && id agentlab >/dev/null 2>&1 &&\n"
        "    command -v setpriv >/dev/null 2>&1; then\n"
        "    U=agentlab\n"
        "    RUN=\"setpriv --reuid=agentlab --regid=agentlab --init-groups\"\n"
        "fi\n"
        "H=$(getent passwd \"$U\" | cut -d: -f6)\n"
        "[ -n \"$H\" ] || H=/\n"
        "rm -rf -- \"$R\" && mkdir -p -- \"$R/work\" \"$R/art\" || bail \"cannot create $R\"\n"
        ": >\"$R/out\" && : >\"$R/err\" || bail \"cannot create the output files in $R\"\n"
        "if [ -n \"$RUN\" ]; then\n"
        "    chown agentlab: \"$R/work\" \"$R/art\" || bail \"cannot hand $R to agentlab\"\n"
        "fi\n"
        "join job\n"
        "[ $? -eq 0 ] || bail \"the job file did not arrive\"\n"
        "if join secrets; then\n"
        "    [ -r \"$P.secrets\" ] || bail \"cannot read the secrets\"\n"
        "    exec 3<\"$P.secrets\"\n"
        "    rm -f -- \"$P.secrets\"\n"
        "else\n"
        "    exec 3</dev/null\n"
        "fi\n"
        "cd \"$R/work\" || bail \"cannot enter $R/work\"\n"
        "if join wd; then\n"
        "    $RUN tar -x --no-same-owner -f \"$P.wd\" 2>\"$R/wd.err\" ||\n"
        "        bail \"unpacking the work directory: $(head -c 200 \"$R/wd.err\" | tr '\\n' ' "
        "')\"\n"
        "    rm -f -- \"$P.wd\"\n"
        "fi\n"
        "SS=\n"
        "command -v setsid >/dev/null 2>&1 && SS=setsid\n"
        "rm -f -- \"$R/timedout\"\n"
        "env -i HOME=\"$H\" USER=\"$U\" LOGNAME=\"$U\" SHELL=/bin/sh PATH=\"$PATH\" LANG=C.UTF-8 "
        "\\\n"
        "    $SS $RUN /bin/sh \"$P.job\" </dev/null >>\"$R/out\" 2>>\"$R/err\" &\n"
        "pid=$!\n"
        "exec 3<&-\n"
        "G=$pid\n"
        "[ -n \"$SS\" ] && G=-$pid\n"
        "wd=\n"
        "if [ \"$T\" -gt 0 ]; then\n"
        "    (\n"
        "        s=\n"
        "        trap '[ -n \"$s\" ] && kill $s; exit 0' TERM\n"
        "        sleep \"$T\" &\n"
        "        s=$!\n"
        "        wait $s\n"
        "        : >\"$R/timedout\"\n"
        "        kill -TERM \"$G\"\n"
        "        sleep 5 &\n"
        "        s=$!\n"
        "        wait $s\n"
        "        kill -KILL \"$G\"\n"
        "    ) </dev/null >/dev/null 2>&1 &\n"
        "    wd=$!\n"
        "fi\n"
        "wait \"$pid\"\n"
        "code=$?\n"
        "[ -n \"$wd\" ] && kill \"$wd\" 2>/dev/null\n"
        "[ -n \"$SS\" ] && kill -KILL \"$G\" 2>/dev/null\n"
        "to=0\n"
        "[ -e \"$R/timedout\" ] && to=1\n"
        "art=0 artrc=0\n"
        "n=$#\n"
        "while [ \"$n\" -gt 0 ]; do\n"
        "    a=$1\n"
        "    shift\n"
        "    n=$((n - 1))\n"
        "    if [ -e \"$a\" ] || [ -L \"$a\" ]; then set -- \"$@\" \"$a\"; else say \"missing "
        "$a\"; "
        "fi\n"
        "done\n"
        "if [ $# -gt 0 ]; then\n"
        "    $RUN tar -c -f \"$R/art/a.tar\" -- \"$@\" 2>\"$R/art.err\"\n"
        "    artrc=$?\n"
        "    [ $artrc -eq 0 ] || say \"diag artifacts: $(head -c 200 \"$R/art.err\" | tr '\\n' ' "
        "')\"\n"
        "    art=$(size \"$R/art/a.tar\")\n"
        "fi\n"
        "say \"status ok=1 exit=$code timedout=$to out=$(size \"$R/out\") err=$(size \"$R/err\") "
        "art=$art artrc=$artrc\"\n"
        "exit 0\n";

const char *pve_guest_runner(void)
{
    return runner;
}

int pve_guest_sh_quote(struct al_buf *out, const char *s)
{
    int r = al_buf_append(out, "'", 1);
    for (const char *p = s; r == 0 && *p; p++) {
        if (*p == '\'')
            r = al_buf_puts(out, "'\\''");
        else
            r = al_buf_append(out, p, 1);
    }
    return r == 0 ? al_buf_append(out, "'", 1) : r;
}

static bool env_name_ok(const char *s)
{
    if (!*s || (*s >= '0' && *s <= '9'))
        return false;
    for (; *s; s++) {
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return false;
    }
    return true;
}

static int add_exports(struct al_buf *out, const struct env_pair *env, size_t n,
                       struct al_error **err)
{
    for (size_t i = 0; i < n; i++) {
        if (!env_name_ok(env[i].name))
            return al_error_set(err, EINVAL, "invalid environment variable name \"%.64s\"",
                                env[i].name);
        int r = al_buf_printf(out, "export %s=", env[i].name);
        if (r == 0)
            r = pve_guest_sh_quote(out, env[i].value);
        if (r == 0)
            r = al_buf_append(out, "\n", 1);
        if (r < 0)
            return al_error_set(err, -r, "building the job file");
    }
    return 0;
}

int pve_guest_job_file(const struct vm_request *req, struct al_buf *out, struct al_error **err)
{
    if (!req->script && !(req->argv && req->argv[0]))
        return al_error_set(err, EINVAL, "the job has neither a command nor a script");
    int r = al_buf_printf(out, "# agentlab job %s\nexport AGENTLAB_JOB_ID=", req->job_id);
    if (r == 0)
        r = pve_guest_sh_quote(out, req->job_id);
    if (r == 0)
        r = al_buf_append(out, "\n", 1);
    if (r < 0)
        return al_error_set(err, -r, "building the job file");
    r = add_exports(out, req->env, req->n_env, err);
    if (r < 0)
        return r;
    /* the secrets come on fd 3 from the runner, never from a file the job
     * could read again */
    r = al_buf_puts(out, "eval \"$(cat <&3)\"\nexec 3<&-\n");
    if (r == 0 && req->script) {
        /* like `sh -e -c SCRIPT`, without the argument size limit */
        r = al_buf_puts(out, "set -e\n");
        if (r == 0)
            r = al_buf_puts(out, req->script);
        if (r == 0)
            r = al_buf_append(out, "\n", 1);
    } else if (r == 0) {
        r = al_buf_puts(out, "exec");
        for (const char *const *a = req->argv; r == 0 && *a; a++) {
            r = al_buf_append(out, " ", 1);
            if (r == 0)
                r = pve_guest_sh_quote(out, *a);
        }
        if (r == 0)
            r = al_buf_append(out, "\n", 1);
    }
    if (r < 0)
        return al_error_set(err, -r, "building the job file");
    if (out->len > (size_t)PVE_GUEST_CHUNK * PVE_GUEST_MAX_CHUNKS)
        return al_error_set(err, E2BIG, "the job file is too large");
    return 0;
}

int pve_guest_secrets_file(const struct vm_request *req, struct al_buf *out, struct al_error **err)
{
    return add_exports(out, req->secret_env, req->n_secret_env, err);
}

char **pve_guest_command(const struct vm_request *req)
{
    size_t n = 0;
    for (const char *const *a = req->artifacts; a && *a; a++)
        n++;
    char **v = calloc(n + 7, sizeof(char *));
    if (!v)
        return NULL;
    size_t k = 0;
    const char *head[] = {"/bin/sh", "-s", "--", PVE_GUEST_PREFIX, PVE_GUEST_ROOT};
    for (size_t i = 0; i < ARRAY_SIZE(head); i++) {
        if (!(v[k++] = strdup(head[i])))
            goto fail;
    }
    if (asprintf(&v[k], "%" PRId64, req->timeout_s > 0 ? req->timeout_s : (int64_t)0) < 0) {
        v[k] = NULL;
        goto fail;
    }
    k++;
    for (const char *const *a = req->artifacts; a && *a; a++) {
        if (!(v[k++] = strdup(*a)))
            goto fail;
    }
    return v;
fail:
    strv_free(v);
    return NULL;
}

static int kv_u64(const char *line, const char *key, uint64_t *ret)
{
    size_t kl = strlen(key);
    for (const char *p = line; (p = strstr(p, key)); p += kl) {
        if ((p == line || p[-1] == ' ') && p[kl] == '=') {
            char num[24];
            size_t n = strcspn(p + kl + 1, " ");
            if (n == 0 || n >= sizeof(num))
                return -EINVAL;
            memcpy(num, p + kl + 1, n);
            num[n] = '\0';
            return al_parse_uint64(num, UINT64_MAX, ret);
        }
    }
    return -ENOENT;
}

static void append_text(char *dst, size_t size, const char *src, size_t n)
{
    size_t o = strlen(dst);
    for (size_t i = 0; i < n && o + 1 < size; i++)
        dst[o++] = (unsigned char)src[i] < 0x20 || src[i] == 0x7f ? '?' : src[i];
    dst[o] = '\0';
}

int pve_guest_status_parse(const char *text, size_t len, struct pve_guest_status *ret)
{
    struct pve_guest_status s = {0};
    const char *end = text + len;
    for (const char *p = text; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        char line[512];
        size_t c = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
        memcpy(line, p, c);
        line[c] = '\0';
        p += n + (nl ? 1 : 0);
        if (strncmp(line, "agentlab-diag ", 14) == 0 && !s.diag[0]) {
            append_text(s.diag, sizeof(s.diag), line + 14, strlen(line + 14));
        } else if (strncmp(line, "agentlab-missing ", 17) == 0) {
            if (s.missing[0])
                append_text(s.missing, sizeof(s.missing), " ", 1);
            append_text(s.missing, sizeof(s.missing), line + 17, strlen(line + 17));
        } else if (strncmp(line, "agentlab-status ", 16) == 0) {
            uint64_t ok, code, to, rc;
            if (kv_u64(line, "ok", &ok) < 0 || kv_u64(line, "exit", &code) < 0 ||
                kv_u64(line, "timedout", &to) < 0 || kv_u64(line, "out", &s.out_bytes) < 0 ||
                kv_u64(line, "err", &s.err_bytes) < 0 || kv_u64(line, "art", &s.art_bytes) < 0 ||
                kv_u64(line, "artrc", &rc) < 0 || code > 255 || ok > 1 || to > 1 || rc > 255)
                return -EINVAL;
            s.have_status = true;
            s.ok = ok == 1;
            s.exit_code = (int)code;
            s.timed_out = to == 1;
            s.art_rc = (int)rc;
        }
    }
    *ret = s;
    return 0;
}
