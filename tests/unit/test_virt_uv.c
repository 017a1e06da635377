/* libvirt's events on our uv loop, with the libvirt test driver. */
#include "test_util.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/loop/virt_uv.h"

struct ctx {
    uv_loop_t loop;
    virConnectPtr conn;
    int cb_id;
    int started, stopped, defined, undefined;
    bool want_done;
    bool freed;
    uv_thread_t loop_thread;
    bool wrong_thread;
};

static const char domain_xml[] = "<domain type='test'>"
                                 "  <name>agentlab-uv-test</name>"
                                 "  <memory unit='MiB'>64</memory>"
                                 "  <os><type>hvm</type></os>"
                                 "</domain>";

static void quiet_errors(void *data, virErrorPtr e)
{
    (void)data;
    (void)e;
}

static int on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *data)
{
    (void)conn;
    (void)dom;
    (void)detail;
    struct ctx *c = data;
    uv_thread_t self = uv_thread_self();
    if (!uv_thread_equal(&self, &c->loop_thread))
        c->wrong_thread = true;
    switch (event) {
    case VIR_DOMAIN_EVENT_STARTED:
        c->started++;
        break;
    case VIR_DOMAIN_EVENT_STOPPED:
        c->stopped++;
        break;
    case VIR_DOMAIN_EVENT_DEFINED:
        c->defined++;
        break;
    case VIR_DOMAIN_EVENT_UNDEFINED:
        c->undefined++;
        break;
    }
    if (c->started && c->stopped && c->defined && c->undefined)
        c->want_done = true;
    return 0;
}

static void on_cb_freed(void *data)
{
    struct ctx *c = data;
    c->freed = true;
}

static void test_lifecycle_events(void **state)
{
    (void)state;
    struct ctx c = {0};
    virSetErrorFunc(NULL, quiet_errors);
    assert_int_equal(uv_loop_init(&c.loop), 0);
    c.loop_thread = uv_thread_self();
    struct al_error *err = NULL;
    assert_int_equal(al_virt_event_register(&c.loop, &err), 0);
    /* idempotent on the same loop */
    assert_int_equal(al_virt_event_register(&c.loop, &err), 0);

    c.conn = virConnectOpen("test:///default");
    assert_non_null(c.conn);
    c.cb_id = virConnectDomainEventRegisterAny(c.conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                               VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), &c,
                                               on_cb_freed);
    assert_true(c.cb_id >= 0);

    /* define, start, destroy, undefine */
    virDomainPtr dom = virDomainDefineXML(c.conn, domain_xml);
    assert_non_null(dom);
    assert_int_equal(virDomainCreate(dom), 0);
    assert_int_equal(virDomainDestroy(dom), 0);
    assert_int_equal(virDomainUndefine(dom), 0);
    virDomainFree(dom);

    /* nothing is delivered until our loop runs */
    assert_int_equal(c.started, 0);
    assert_true(test_run_until(&c.loop, &c.want_done, 10000));
    assert_int_equal(c.started, 1);
    assert_int_equal(c.stopped, 1);
    assert_int_equal(c.defined, 1);
    assert_int_equal(c.undefined, 1);
    assert_false(c.wrong_thread);

    unsigned handles = 0, timers = 0;
    al_virt_event_counts(&handles, &timers);
    assert_true(timers >= 1); /* libvirt's event-queue flush timer */

    assert_int_equal(virConnectDomainEventDeregisterAny(c.conn, c.cb_id), 0);
    assert_int_equal(virConnectClose(c.conn), 0);
    /* the free callback is deferred to the loop, never synchronous */
    uv_run(&c.loop, UV_RUN_NOWAIT);
    assert_true(c.freed);

    al_virt_event_shutdown();
    al_virt_event_counts(&handles, &timers);
    assert_int_equal(handles, 0);
    assert_int_equal(timers, 0);
    test_loop_close(&c.loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_lifecycle_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
