package kr.esnode;

import java.util.function.Supplier;

import org.elasticsearch.action.ActionListener;
import org.elasticsearch.action.ActionRequest;
import org.elasticsearch.action.ActionResponse;
import org.elasticsearch.action.admin.cluster.snapshots.create.CreateSnapshotRequest;
import org.elasticsearch.action.admin.cluster.snapshots.restore.RestoreSnapshotRequest;
import org.elasticsearch.action.support.ActionFilter;
import org.elasticsearch.action.support.ActionFilterChain;
import org.elasticsearch.common.util.concurrent.ThreadContext;
import org.elasticsearch.tasks.Task;

/**
 * Records every snapshot create and restore action on the node that receives it (the coordinating node), with
 * User-Agent, X-Opaque-Id and X-elastic-product-origin, and whether it succeeded. Same on every ES version.
 */
final class CountingFilter implements ActionFilter {

    static final String RESTORE_ACTION = "cluster:admin/snapshot/restore";
    static final String CREATE_SNAPSHOT_ACTION = "cluster:admin/snapshot/create";
    static final String USER_AGENT = "User-Agent";

    private final Counters counters;
    private final Supplier<ThreadContext> threadContext;

    CountingFilter(Counters counters, Supplier<ThreadContext> threadContext) {
        this.counters = counters;
        this.threadContext = threadContext;
    }

    @Override
    public int order() {
        return Integer.MIN_VALUE;
    }

    private String header(Task task, String name) {
        String v = task == null ? null : task.getHeader(name);
        ThreadContext ctx = threadContext.get();
        if (v == null && ctx != null) {
            v = ctx.getHeader(name);
        }
        return v;
    }

    @Override
    public <Request extends ActionRequest, Response extends ActionResponse> void apply(
        Task task,
        String action,
        Request request,
        ActionListener<Response> listener,
        ActionFilterChain<Request, Response> chain
    ) {
        Counters.Call call = null;
        if (RESTORE_ACTION.equals(action) && request instanceof RestoreSnapshotRequest r) {
            call = new Counters.Call(counters.seq.incrementAndGet(), r.repository(), r.snapshot(), r.featureStates(), r.indices(),
                r.includeGlobalState(), header(task, USER_AGENT), header(task, Task.X_OPAQUE_ID_HTTP_HEADER),
                header(task, Task.X_ELASTIC_PRODUCT_ORIGIN_HTTP_HEADER));
            counters.addRestore(call);
        } else if (CREATE_SNAPSHOT_ACTION.equals(action) && request instanceof CreateSnapshotRequest r) {
            call = new Counters.Call(counters.seq.incrementAndGet(), r.repository(), r.snapshot(), r.featureStates(), r.indices(),
                r.includeGlobalState(), header(task, USER_AGENT), header(task, Task.X_OPAQUE_ID_HTTP_HEADER),
                header(task, Task.X_ELASTIC_PRODUCT_ORIGIN_HTTP_HEADER));
            counters.addCreate(call);
        }
        if (call == null) {
            chain.proceed(task, action, request, listener);
            return;
        }
        final Counters.Call recorded = call;
        chain.proceed(task, action, request, new ActionListener<Response>() {
            @Override
            public void onResponse(Response response) {
                recorded.outcome = "ok";
                listener.onResponse(response);
            }

            @Override
            public void onFailure(Exception e) {
                recorded.outcome = "failed: " + e;
                listener.onFailure(e);
            }
        });
    }
}
