package kr.esnode;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Predicate;
import java.util.function.Supplier;

import org.elasticsearch.action.ActionListener;
import org.elasticsearch.action.ActionRequest;
import org.elasticsearch.action.ActionResponse;
import org.elasticsearch.action.admin.cluster.snapshots.create.CreateSnapshotRequest;
import org.elasticsearch.action.admin.cluster.snapshots.restore.RestoreSnapshotRequest;
import org.elasticsearch.action.support.ActionFilter;
import org.elasticsearch.action.support.ActionFilterChain;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.metadata.IndexNameExpressionResolver;
import org.elasticsearch.cluster.node.DiscoveryNodes;
import org.elasticsearch.common.io.stream.NamedWriteableRegistry;
import org.elasticsearch.common.settings.ClusterSettings;
import org.elasticsearch.common.settings.IndexScopedSettings;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.common.settings.SettingsFilter;
import org.elasticsearch.common.util.concurrent.ThreadContext;
import org.elasticsearch.features.NodeFeature;
import org.elasticsearch.indices.SystemIndexDescriptor;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.SystemIndexPlugin;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestController;
import org.elasticsearch.rest.RestHandler;
import org.elasticsearch.rest.RestHeaderDefinition;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.tasks.Task;
import org.elasticsearch.threadpool.ThreadPool;
import org.elasticsearch.xcontent.XContentBuilder;
import org.elasticsearch.xcontent.XContentFactory;

/**
 * Test-only stand-in for Kibana's own ES module: registers the "kibana" feature with the same system index
 * descriptors, so GET _features lists it and snapshot/restore of feature_states ["kibana"] really works.
 * Also counts snapshot create/restore actions as the node sees them, exposed at GET /_kr_test/counters
 * (DELETE resets).
 */
public class KibanaTestPlugin extends Plugin implements SystemIndexPlugin {

    static final String RESTORE_ACTION = "cluster:admin/snapshot/restore";
    static final String CREATE_SNAPSHOT_ACTION = "cluster:admin/snapshot/create";
    static final String USER_AGENT = "User-Agent";

    private final Counters counters = new Counters();
    private volatile ThreadPool threadPool;

    public KibanaTestPlugin() {}

    @Override
    public String getFeatureName() {
        return "kibana";
    }

    @Override
    public String getFeatureDescription() {
        return "Test stand-in for Kibana's system indices (kibana-rollback)";
    }

    @Override
    public Collection<SystemIndexDescriptor> getSystemIndexDescriptors(Settings settings) {
        return List.of(
            descriptor(".kibana_*", "Kibana saved objects system index", ".kibana"),
            descriptor(".reporting-*", "system index for reporting", null),
            descriptor(".apm-agent-configuration*", "system index for APM agent configuration", null),
            descriptor(".apm-custom-link*", "system index for APM custom links", null)
        );
    }

    private static SystemIndexDescriptor descriptor(String pattern, String description, String alias) {
        SystemIndexDescriptor.Builder b = SystemIndexDescriptor.builder()
            .setIndexPattern(pattern)
            .setDescription(description)
            .setType(SystemIndexDescriptor.Type.EXTERNAL_UNMANAGED)
            .setAllowedElasticProductOrigins(List.of("kibana"));
        if (alias != null) {
            b.setAliasName(alias);
        }
        return b.build();
    }

    @Override
    public Collection<?> createComponents(PluginServices services) {
        this.threadPool = services.threadPool();
        return List.of();
    }

    /** Copy User-Agent from HTTP requests into the thread context so the filter can record it. */
    @Override
    public Collection<RestHeaderDefinition> getRestHeaders() {
        return List.of(new RestHeaderDefinition(USER_AGENT, false));
    }

    @Override
    public List<ActionFilter> getActionFilters() {
        return List.of(new CountingFilter());
    }

    @Override
    public List<RestHandler> getRestHandlers(
        Settings settings,
        NamedWriteableRegistry namedWriteableRegistry,
        RestController restController,
        ClusterSettings clusterSettings,
        IndexScopedSettings indexScopedSettings,
        SettingsFilter settingsFilter,
        IndexNameExpressionResolver indexNameExpressionResolver,
        Supplier<DiscoveryNodes> nodesInCluster,
        Predicate<NodeFeature> clusterSupportsFeature
    ) {
        return List.of(new CountersHandler());
    }

    // ---------------------------------------------------------------------------------------------------

    static final class Call {
        final long seq;
        final String repository;
        final String snapshot;
        final List<String> featureStates;
        final List<String> indices;
        final boolean includeGlobalState;
        final String userAgent;
        final String opaqueId;
        final String productOrigin;
        volatile String outcome = "pending";

        Call(long seq, String repository, String snapshot, String[] featureStates, String[] indices, boolean includeGlobalState,
             String userAgent, String opaqueId, String productOrigin) {
            this.seq = seq;
            this.repository = repository;
            this.snapshot = snapshot;
            this.featureStates = featureStates == null ? List.of() : List.copyOf(Arrays.asList(featureStates));
            this.indices = indices == null ? List.of() : List.copyOf(Arrays.asList(indices));
            this.includeGlobalState = includeGlobalState;
            this.userAgent = userAgent;
            this.opaqueId = opaqueId;
            this.productOrigin = productOrigin;
        }

        void toXContent(XContentBuilder b) throws IOException {
            b.startObject();
            b.field("seq", seq);
            b.field("repository", repository);
            b.field("snapshot", snapshot);
            b.field("feature_states", featureStates);
            b.field("indices", indices);
            b.field("include_global_state", includeGlobalState);
            b.field("user_agent", userAgent);
            b.field("x_opaque_id", opaqueId);
            b.field("x_elastic_product_origin", productOrigin);
            b.field("outcome", outcome);
            b.endObject();
        }
    }

    static final class Counters {
        final AtomicLong seq = new AtomicLong();
        final List<Call> restores = new ArrayList<>();
        final List<Call> creates = new ArrayList<>();

        synchronized void reset() {
            restores.clear();
            creates.clear();
        }

        synchronized void add(List<Call> list, Call c) {
            list.add(c);
        }

        synchronized XContentBuilder toXContent() throws IOException {
            XContentBuilder b = XContentFactory.jsonBuilder();
            b.startObject();
            b.field("restore", restores.size());
            b.field("create_snapshot", creates.size());
            b.startArray("restores");
            for (Call c : restores) {
                c.toXContent(b);
            }
            b.endArray();
            b.startArray("create_snapshots");
            for (Call c : creates) {
                c.toXContent(b);
            }
            b.endArray();
            b.endObject();
            return b;
        }
    }

    private String header(Task task, String name) {
        String v = task == null ? null : task.getHeader(name);
        if (v == null && threadPool != null) {
            ThreadContext ctx = threadPool.getThreadContext();
            v = ctx.getHeader(name);
        }
        return v;
    }

    final class CountingFilter implements ActionFilter {
        @Override
        public int order() {
            return Integer.MIN_VALUE;
        }

        @Override
        public <Request extends ActionRequest, Response extends ActionResponse> void apply(
            Task task,
            String action,
            Request request,
            ActionListener<Response> listener,
            ActionFilterChain<Request, Response> chain
        ) {
            Call call = null;
            if (RESTORE_ACTION.equals(action) && request instanceof RestoreSnapshotRequest r) {
                call = new Call(counters.seq.incrementAndGet(), r.repository(), r.snapshot(), r.featureStates(), r.indices(),
                    r.includeGlobalState(), header(task, USER_AGENT), header(task, Task.X_OPAQUE_ID_HTTP_HEADER),
                    header(task, Task.X_ELASTIC_PRODUCT_ORIGIN_HTTP_HEADER));
                counters.add(counters.restores, call);
            } else if (CREATE_SNAPSHOT_ACTION.equals(action) && request instanceof CreateSnapshotRequest r) {
                call = new Call(counters.seq.incrementAndGet(), r.repository(), r.snapshot(), r.featureStates(), r.indices(),
                    r.includeGlobalState(), header(task, USER_AGENT), header(task, Task.X_OPAQUE_ID_HTTP_HEADER),
                    header(task, Task.X_ELASTIC_PRODUCT_ORIGIN_HTTP_HEADER));
                counters.add(counters.creates, call);
            }
            if (call == null) {
                chain.proceed(task, action, request, listener);
                return;
            }
            final Call recorded = call;
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

    final class CountersHandler extends BaseRestHandler {
        @Override
        public String getName() {
            return "kr_test_counters";
        }

        @Override
        public List<Route> routes() {
            return List.of(new Route(RestRequest.Method.GET, "/_kr_test/counters"),
                new Route(RestRequest.Method.DELETE, "/_kr_test/counters"));
        }

        @Override
        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            final boolean reset = request.method() == RestRequest.Method.DELETE;
            return channel -> {
                XContentBuilder body = counters.toXContent();
                if (reset) {
                    counters.reset();
                }
                channel.sendResponse(new RestResponse(RestStatus.OK, body));
            };
        }
    }
}
