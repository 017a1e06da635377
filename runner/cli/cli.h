/* Shared pieces of the agentlab CLI. */
#ifndef AL_CLI_H
#define AL_CLI_H

struct cli_command {
    const char *name;
    const char *summary;
    /* argv[0] is the command name */
    int (*run)(int argc, char **argv);
};

int cmd_run(int argc, char **argv);
int cmd_gc(int argc, char **argv);
/* agentlab image ... (cmd_image.c) */
int cmd_image(int argc, char **argv);
/* agentlab pool status, agentlab vm ls (cmd_pool.c) */
int cmd_pool(int argc, char **argv);
int cmd_vm(int argc, char **argv);
/* agentlab host ls (cmd_host.c) */
int cmd_host(int argc, char **argv);
/* agentlab batch ... (cmd_batch.c) */
int cmd_batch(int argc, char **argv);
/* agentlab gitlab register (cmd_gitlab.c) */
int cmd_gitlab(int argc, char **argv);

#endif
