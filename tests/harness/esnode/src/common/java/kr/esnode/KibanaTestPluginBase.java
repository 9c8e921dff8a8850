package kr.esnode;

import java.util.Collection;
import java.util.List;

import org.elasticsearch.Version;
import org.elasticsearch.action.support.ActionFilter;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.indices.SystemIndexDescriptor;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.SystemIndexPlugin;
import org.elasticsearch.rest.RestHeaderDefinition;
import org.elasticsearch.threadpool.ThreadPool;

/**
 * Test stand-in for Elasticsearch's own `kibana` module, the part every version shares: the `kibana` feature with
 * the system index descriptors of the running version's real KibanaPlugin ({@link KibanaDescriptors}), so
 * GET _features lists it and snapshot/restore of feature_states ["kibana"] really works, and the counting of
 * snapshot create/restore actions ({@link CountingFilter}). The per-version subclass KibanaTestPlugin adds the
 * REST handlers, whose plugin API differs between 7.x and 8.x/9.x.
 */
public abstract class KibanaTestPluginBase extends Plugin implements SystemIndexPlugin {

    protected final Counters counters = new Counters();
    protected volatile ThreadPool threadPool;

    @Override
    public String getFeatureName() {
        return "kibana";
    }

    @Override
    public String getFeatureDescription() {
        return "Manages Kibana configuration and reports";
    }

    @Override
    public Collection<SystemIndexDescriptor> getSystemIndexDescriptors(Settings settings) {
        return KibanaDescriptors.forVersion(Version.CURRENT.major, Version.CURRENT.minor);
    }

    /** Copy User-Agent from HTTP requests into the thread context so the filter can record it. */
    @Override
    public Collection<RestHeaderDefinition> getRestHeaders() {
        return List.of(new RestHeaderDefinition(CountingFilter.USER_AGENT, false));
    }

    @Override
    public List<ActionFilter> getActionFilters() {
        return List.of(new CountingFilter(counters, () -> threadPool == null ? null : threadPool.getThreadContext()));
    }
}
