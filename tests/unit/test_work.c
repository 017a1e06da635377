#include "test_util.h"

#include <stdlib.h>
#include <unistd.h>

#include "runner/loop/work.h"

struct item {
    int n;
    int result;
    bool ran_on_pool;
    bool done_on_loop;
    struct ctx *ctx;
};

struct ctx {
    uv_thread_t loop_thread;
    int done;
    bool all;
};

static int work(void *data, struct al_error **err)
{
    struct item *it = data;
    uv_thread_t self = uv_thread_self();
    it->ran_on_pool = !uv_thread_equal(&self, &it->ctx->loop_thread);
    usleep(10000);
    if (it->n == 3)
        return al_error_set(err, EIO, "item %d failed", it->n);
    return it->n;
}

static void done(void *data, int result, struct al_error *err)
{
    struct item *it = data;
    uv_thread_t self = uv_thread_self();
    it->done_on_loop = uv_thread_equal(&self, &it->ctx->loop_thread);
    it->result = result;
    if (it->n == 3) {
        assert_non_null(err);
        assert_string_equal(al_error_message(err), "item 3 failed");
    } else {
        assert_null(err);
    }
    al_error_free(err);
    if (++it->ctx->done == 8)
        it->ctx->all = true;
}

static void test_queue(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct ctx c = {.loop_thread = uv_thread_self()};
    struct item items[8];
    for (int i = 0; i < 8; i++) {
        items[i] = (struct item){.n = i, .ctx = &c};
        assert_int_equal(al_work_queue(&loop, work, done, &items[i], NULL), 0);
    }
    assert_true(test_run_until(&loop, &c.all, 10000));
    for (int i = 0; i < 8; i++) {
        assert_true(items[i].ran_on_pool);
        assert_true(items[i].done_on_loop);
        assert_int_equal(items[i].result, i == 3 ? -EIO : i);
    }
    test_loop_close(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_queue)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
