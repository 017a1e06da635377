/* Control-API benchmark client.
 *
 *   bench_api populate DIR N
 *       creates DIR/agentlab.db holding N finished jobs (what a busy runner
 *       keeps for its retention period)
 *   bench_api run (--socket PATH | --port N [--token-file F]) [--conns C]
 *                 [--seconds S] [--path P] [--pid PID]
 *       C threads, each with one keep-alive connection, send GET P (default
 *       /v1/jobs?limit=50) back to back for S seconds; prints requests/s and
 *       latency percentiles. Every response must be a complete 200. With
 *       --pid (the daemon's), also the CPU time the daemon spent per request
 *       (user + system, from /proc/PID/stat).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "runner/base/util.h"
#include "runner/engine/spec.h"
#include "runner/engine/store.h"

#define MAX_CONNS   64
#define MAX_SAMPLES (1u << 22)

struct worker {
    pthread_t th;
    const char *socket;
    int port;
    const char *request;
    size_t request_len;
    uint64_t end_us;
    uint64_t requests;
    uint64_t bytes;
    uint32_t *lat_us; /* one sample per request, up to MAX_SAMPLES / conns */
    size_t n_lat, cap_lat;
    int error;
};

static int populate(const char *dir, unsigned n)
{
    struct al_error *err = NULL;
    char *db = al_path_join(dir, "agentlab.db");
    struct store *s = NULL;
    if (al_mkdir_p(dir, 0711, &err) < 0 || store_open(db, NULL, &s, &err) < 0) {
        fprintf(stderr, "bench_api: %s\n", al_error_message(err));
        return 1;
    }
    free(db);
    static const char spec_json[] =
            "{\"name\":\"bench\",\"image\":\"debian-12\",\"command\":[\"make\",\"-C\",\"src\","
            "\"check\"],\"env\":{\"CI\":\"true\"},\"labels\":[\"x86_64\"],\"pool\":\"default\","
            "\"resources\":{\"cpus\":1,\"memory_mb\":1024},\"timeout_s\":3600,\"max_attempts\":2,"
            "\"source\":{\"type\":\"api\"}}";
    struct job_spec *spec = NULL;
    if (job_spec_parse(spec_json, strlen(spec_json), 0, &spec, &err) < 0) {
        fprintf(stderr, "bench_api: %s\n", al_error_message(err));
        return 1;
    }
    uint64_t t0 = al_now_mono_ms();
    for (unsigned i = 0; i < n; i++) {
        char id[STORE_JOB_ID_SIZE];
        struct store_transition t = {.to = JOB_STATE_CANCELED, .detail = "benchmark filler"};
        if (store_job_insert(s, spec, id, NULL, &err) < 0 ||
            store_job_transition(s, id, &t, NULL, &err) < 0) {
            fprintf(stderr, "bench_api: %s\n", al_error_message(err));
            return 1;
        }
    }
    store_sync(s, NULL);
    printf("populated %u jobs in %.1fs\n", n, (double)(al_now_mono_ms() - t0) / 1000.0);
    job_spec_free(spec);
    store_close(s);
    return 0;
}

static int dial(const struct worker *w)
{
    int fd;
    if (w->socket) {
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", w->socket);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            return -1;
    } else {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)w->port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int one = 1;
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            return -1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

/* Reads one response with a Content-Length body; returns its size or -1. */
static ssize_t read_response(int fd, char *buf, size_t cap)
{
    size_t have = 0;
    size_t need = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, cap - have - 1);
        if (n <= 0)
            return -1;
        have += (size_t)n;
        buf[have] = '\0';
        if (!need) {
            char *end = strstr(buf, "\r\n\r\n");
            if (!end)
                continue;
            if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0)
                return -1;
            char *cl = strcasestr(buf, "\r\nContent-Length: ");
            if (!cl || cl > end)
                return -1;
            need = (size_t)(end + 4 - buf) + strtoul(cl + 18, NULL, 10);
            if (need >= cap)
                return -1;
        }
        if (have >= need)
            return have == need ? (ssize_t)have : -1; /* nothing is pipelined */
    }
}

static void *work(void *arg)
{
    struct worker *w = arg;
    int fd = dial(w);
    if (fd < 0) {
        w->error = errno;
        return NULL;
    }
    size_t cap = 4u << 20;
    char *buf = malloc(cap);
    while (al_now_mono_us() < w->end_us) {
        uint64_t t = al_now_mono_us();
        if (write(fd, w->request, w->request_len) != (ssize_t)w->request_len) {
            w->error = EPIPE;
            break;
        }
        ssize_t n = read_response(fd, buf, cap);
        if (n < 0) {
            w->error = EPROTO;
            break;
        }
        w->requests++;
        w->bytes += (uint64_t)n;
        if (w->n_lat < w->cap_lat)
            w->lat_us[w->n_lat++] = (uint32_t)(al_now_mono_us() - t);
    }
    free(buf);
    close(fd);
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* CPU seconds (user + system) a process has used, or -1. */
static double proc_cpu_s(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    /* after "(comm)": state and fields 4..13, then utime and stime */
    if (!p ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int run(int argc, char **argv)
{
    static const struct option opts[] = {
            {"socket", required_argument, NULL, 's'},     {"port", required_argument, NULL, 'p'},
            {"token-file", required_argument, NULL, 't'}, {"conns", required_argument, NULL, 'c'},
            {"seconds", required_argument, NULL, 'd'},    {"path", required_argument, NULL, 'P'},
            {"pid", required_argument, NULL, 'i'},        {NULL, 0, NULL, 0},
    };
    int pid = 0;
    const char *socket_path = NULL, *token_file = NULL, *path = "/v1/jobs?limit=50";
    int port = 0, conns = 1, seconds = 10, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            socket_path = optarg;
            break;
        case 'p':
            al_parse_int(optarg, 1, 65535, &port);
            break;
        case 't':
            token_file = optarg;
            break;
        case 'c':
            al_parse_int(optarg, 1, MAX_CONNS, &conns);
            break;
        case 'd':
            al_parse_int(optarg, 1, 3600, &seconds);
            break;
        case 'P':
            path = optarg;
            break;
        case 'i':
            al_parse_int(optarg, 1, INT32_MAX, &pid);
            break;
        default:
            return 2;
        }
    }
    char auth[512] = "";
    if (token_file) {
        char *tok = NULL;
        size_t len = 0;
        struct al_error *err = NULL;
        if (al_read_file(token_file, 400, &tok, &len, &err) < 0)
            return 1;
        while (len && (tok[len - 1] == '\n' || tok[len - 1] == ' '))
            tok[--len] = '\0';
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s\r\n", tok);
        free(tok);
    }
    char request[1024];
    int rl = snprintf(request, sizeof(request), "GET %s HTTP/1.1\r\nHost: bench\r\n%s\r\n", path,
                      auth);
    struct worker w[MAX_CONNS];
    uint64_t end = al_now_mono_us() + (uint64_t)seconds * 1000000;
    uint64_t t0 = al_now_mono_us();
    double cpu0 = pid ? proc_cpu_s(pid) : -1;
    for (int i = 0; i < conns; i++) {
        w[i] = (struct worker){.socket = socket_path,
                               .port = port,
                               .request = request,
                               .request_len = (size_t)rl,
                               .end_us = end,
                               .cap_lat = MAX_SAMPLES / (size_t)conns};
        w[i].lat_us = malloc(w[i].cap_lat * sizeof(uint32_t));
        pthread_create(&w[i].th, NULL, work, &w[i]);
    }
    uint64_t total = 0, bytes = 0;
    size_t n_lat = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(w[i].th, NULL);
        if (w[i].error) {
            fprintf(stderr, "bench_api: connection %d failed: %s\n", i, strerror(w[i].error));
            return 1;
        }
        total += w[i].requests;
        bytes += w[i].bytes;
        n_lat += w[i].n_lat;
    }
    double secs = (double)(al_now_mono_us() - t0) / 1e6;
    double cpu1 = pid ? proc_cpu_s(pid) : -1;
    uint32_t *all = malloc((n_lat ? n_lat : 1) * sizeof(uint32_t));
    size_t k = 0;
    for (int i = 0; i < conns; i++) {
        memcpy(all + k, w[i].lat_us, w[i].n_lat * sizeof(uint32_t));
        k += w[i].n_lat;
        free(w[i].lat_us);
    }
    qsort(all, n_lat, sizeof(uint32_t), cmp_u32);
    printf("%s %s conns=%d: %.0f requests/s, %.1f MB/s, latency p50 %.2f ms, p99 %.2f ms "
           "(%llu requests, %llu bytes each)\n",
           socket_path ? "unix" : "tcp", path, conns, (double)total / secs,
           (double)bytes / secs / 1e6, n_lat ? all[n_lat / 2] / 1000.0 : 0,
           n_lat ? all[n_lat * 99 / 100] / 1000.0 : 0, (unsigned long long)total,
           (unsigned long long)(total ? bytes / total : 0));
    if (cpu0 >= 0 && cpu1 >= 0 && total)
        printf("  agentlabd CPU per request: %.3f ms (%.2f s of CPU for %llu requests)\n",
               (cpu1 - cpu0) * 1000.0 / (double)total, cpu1 - cpu0, (unsigned long long)total);
    free(all);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "populate") == 0) {
        int n = 0;
        if (al_parse_int(argv[3], 1, 10000000, &n) < 0)
            return 2;
        return populate(argv[2], (unsigned)n);
    }
    if (argc >= 2 && strcmp(argv[1], "run") == 0)
        return run(argc - 1, argv + 1);
    fprintf(stderr, "usage: bench_api populate DIR N | bench_api run --socket PATH|--port N "
                    "[--token-file F] [--conns C] [--seconds S] [--path P]\n");
    return 2;
}
