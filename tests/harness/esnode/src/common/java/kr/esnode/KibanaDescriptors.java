package kr.esnode;

import java.util.ArrayList;
import java.util.List;

import org.elasticsearch.indices.SystemIndexDescriptor;

/**
 * The `kibana` feature's system index descriptors as the real KibanaPlugin (elastic/elasticsearch
 * modules/kibana/.../KibanaPlugin.java) of the running node's version line registers them, chosen at run time from
 * the node's own version:
 *
 * <ul>
 *   <li>7.17: .kibana_* (alias .kibana), .reporting-*, .apm-agent-configuration*, .apm-custom-link*;
 *       no templates allowed (the flag exists but 7.x's plugin does not set it).</li>
 *   <li>8.x up to 9.1: the same four; .kibana_* allows templates (kept since elastic/elasticsearch#98888 reverted
 *       #98696 for 7.17 Kibana's .kibana_security_session_1 template).</li>
 *   <li>9.2 and later: also .chat-* (Onechat, elastic/elasticsearch#131419 and #131914, July 2025) and .workflows-*
 *       (#134067, September 2025), both allowing templates. No system data streams: the workflows data streams and
 *       the .workflows~(...) complement pattern came with #145822 (April 2026), .evaluation-* with #148880 (May 2026),
 *       both after 9.2.</li>
 * </ul>
 *
 * All are EXTERNAL_UNMANAGED with allowed product origin "kibana", as in the real plugin.
 */
final class KibanaDescriptors {

    private KibanaDescriptors() {}

    static List<SystemIndexDescriptor> forVersion(int major, int minor) {
        boolean templates = major >= 8;
        List<SystemIndexDescriptor> out = new ArrayList<>();
        out.add(descriptor(".kibana_*", "Kibana saved objects system index", ".kibana", templates));
        out.add(descriptor(".reporting-*", "system index for reporting", null, false));
        if (major > 9 || (major == 9 && minor >= 2)) {
            out.add(descriptor(".chat-*", "Onechat system index", null, true));
            out.add(descriptor(".workflows-*", "Workflows system index", null, true));
        }
        out.add(descriptor(".apm-agent-configuration*", "system index for APM agent configuration", null, false));
        out.add(descriptor(".apm-custom-link*", "system index for APM custom links", null, false));
        return List.copyOf(out);
    }

    private static SystemIndexDescriptor descriptor(String pattern, String description, String alias, boolean allowsTemplates) {
        SystemIndexDescriptor.Builder b = SystemIndexDescriptor.builder()
            .setIndexPattern(pattern)
            .setDescription(description)
            .setType(SystemIndexDescriptor.Type.EXTERNAL_UNMANAGED)
            .setAllowedElasticProductOrigins(List.of("kibana"));
        if (alias != null) {
            b.setAliasName(alias);
        }
        if (allowsTemplates) {
            b.setAllowsTemplates();
        }
        return b.build();
    }
}
