package kr.esnode;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;

import org.elasticsearch.xcontent.XContentBuilder;
import org.elasticsearch.xcontent.XContentFactory;

/**
 * The snapshot create and restore requests this node has seen, with the headers they came with and how they
 * ended; served at GET /_kr_test/counters (DELETE returns them and resets). Same on every ES version.
 */
final class Counters {

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

    final AtomicLong seq = new AtomicLong();
    private final List<Call> restores = new ArrayList<>();
    private final List<Call> creates = new ArrayList<>();

    synchronized void reset() {
        restores.clear();
        creates.clear();
    }

    synchronized void addRestore(Call c) {
        restores.add(c);
    }

    synchronized void addCreate(Call c) {
        creates.add(c);
    }

    /** The counters as JSON; with {@code reset}, cleared in the same step so no call is lost between the two. */
    synchronized XContentBuilder toXContent(boolean reset) throws IOException {
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
        if (reset) {
            reset();
        }
        return b;
    }
}
