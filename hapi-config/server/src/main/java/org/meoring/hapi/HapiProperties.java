package org.meoring.hapi;

import java.util.ArrayList;
import java.util.List;
import org.springframework.boot.context.properties.ConfigurationProperties;

/**
 * Server switches, bound from {@code hapi.fhir.*}.
 *
 * <p>The key names deliberately follow the official {@code hapiproject/hapi} image (the
 * hapi-fhir-jpaserver-starter's AppProperties), e.g. {@code hapi.fhir.reuse_cached_search_results_millis},
 * so the same settings read the same in ../application.yaml (Docker) and in this server's
 * application.yaml. Only the keys listed here are honoured by the embedded server; keys marked
 * "embedded only" have no counterpart in the image.
 */
@ConfigurationProperties(prefix = "hapi.fhir")
public class HapiProperties {

	/** Only R4 is built into this server; any other value fails at startup. */
	private String fhirVersion = "R4";

	/** Hard-coded base URL used in links (Location, paging, bulk export output). Unset = from the request. */
	private String serverAddress;

	private boolean allowExternalReferences = true;
	private boolean enforceReferentialIntegrityOnWrite = true;
	private boolean enforceReferentialIntegrityOnDelete = true;
	private boolean autoCreatePlaceholderReferenceTargets = false;

	/** ALPHANUMERIC (ids must contain a non-digit), ANY, NOT_ALLOWED. */
	private String clientIdStrategy = "ALPHANUMERIC";
	/** SEQUENTIAL_NUMERIC or UUID. */
	private String serverIdStrategy = "SEQUENTIAL_NUMERIC";

	/** -1 (or any negative value) = never reuse cached search results: every search is fresh. */
	private long reuseCachedSearchResultsMillis = -1;

	private boolean expungeEnabled = true;
	private boolean deleteExpungeEnabled = true;
	private boolean allowMultipleDelete = true;

	private boolean bulkExportEnabled = true;
	private int bulkExportFileRetentionPeriodHours = 2;

	private int defaultPageSize = 20;
	private int maxPageSize = 200;

	/** Embedded only: how often the batch2 maintenance pass runs (bulk export progress). */
	private long batch2MaintenanceIntervalMs = 2000;

	private final Subscription subscription = new Subscription();
	private final Cors cors = new Cors();
	private final Validation validation = new Validation();

	public static class Subscription {
		private boolean resthookEnabled = true;
		/** Put Subscription changes on the queue right away (faster activation). */
		private boolean immediatelyQueued = true;
		/** How often queued resource changes are polled from the database (HAPI default 5000). */
		private long pollingIntervalMs = 1000;

		public boolean isResthookEnabled() {
			return resthookEnabled;
		}

		public void setResthookEnabled(boolean resthookEnabled) {
			this.resthookEnabled = resthookEnabled;
		}

		public boolean isImmediatelyQueued() {
			return immediatelyQueued;
		}

		public void setImmediatelyQueued(boolean immediatelyQueued) {
			this.immediatelyQueued = immediatelyQueued;
		}

		public long getPollingIntervalMs() {
			return pollingIntervalMs;
		}

		public void setPollingIntervalMs(long pollingIntervalMs) {
			this.pollingIntervalMs = pollingIntervalMs;
		}
	}

	public static class Cors {
		/** Embedded only: switch the CORS interceptor off entirely. */
		private boolean enabled = true;
		private List<String> allowedOrigin = new ArrayList<>(List.of("*"));
		private boolean allowCredentials = false;

		public boolean isEnabled() {
			return enabled;
		}

		public void setEnabled(boolean enabled) {
			this.enabled = enabled;
		}

		public List<String> getAllowedOrigin() {
			return allowedOrigin;
		}

		public void setAllowedOrigin(List<String> allowedOrigin) {
			this.allowedOrigin = allowedOrigin;
		}

		public boolean isAllowCredentials() {
			return allowCredentials;
		}

		public void setAllowCredentials(boolean allowCredentials) {
			this.allowCredentials = allowCredentials;
		}
	}

	public static class Validation {
		/** Validate every incoming resource (rejects invalid writes); $validate works either way. */
		private boolean requestsEnabled = false;
		private boolean responsesEnabled = false;

		public boolean isRequestsEnabled() {
			return requestsEnabled;
		}

		public void setRequestsEnabled(boolean requestsEnabled) {
			this.requestsEnabled = requestsEnabled;
		}

		public boolean isResponsesEnabled() {
			return responsesEnabled;
		}

		public void setResponsesEnabled(boolean responsesEnabled) {
			this.responsesEnabled = responsesEnabled;
		}
	}

	public String getFhirVersion() {
		return fhirVersion;
	}

	public void setFhirVersion(String fhirVersion) {
		this.fhirVersion = fhirVersion;
	}

	public String getServerAddress() {
		return serverAddress;
	}

	public void setServerAddress(String serverAddress) {
		this.serverAddress = serverAddress;
	}

	public boolean isAllowExternalReferences() {
		return allowExternalReferences;
	}

	public void setAllowExternalReferences(boolean allowExternalReferences) {
		this.allowExternalReferences = allowExternalReferences;
	}

	public boolean isEnforceReferentialIntegrityOnWrite() {
		return enforceReferentialIntegrityOnWrite;
	}

	public void setEnforceReferentialIntegrityOnWrite(boolean enforceReferentialIntegrityOnWrite) {
		this.enforceReferentialIntegrityOnWrite = enforceReferentialIntegrityOnWrite;
	}

	public boolean isEnforceReferentialIntegrityOnDelete() {
		return enforceReferentialIntegrityOnDelete;
	}

	public void setEnforceReferentialIntegrityOnDelete(boolean enforceReferentialIntegrityOnDelete) {
		this.enforceReferentialIntegrityOnDelete = enforceReferentialIntegrityOnDelete;
	}

	public boolean isAutoCreatePlaceholderReferenceTargets() {
		return autoCreatePlaceholderReferenceTargets;
	}

	public void setAutoCreatePlaceholderReferenceTargets(boolean autoCreatePlaceholderReferenceTargets) {
		this.autoCreatePlaceholderReferenceTargets = autoCreatePlaceholderReferenceTargets;
	}

	public String getClientIdStrategy() {
		return clientIdStrategy;
	}

	public void setClientIdStrategy(String clientIdStrategy) {
		this.clientIdStrategy = clientIdStrategy;
	}

	public String getServerIdStrategy() {
		return serverIdStrategy;
	}

	public void setServerIdStrategy(String serverIdStrategy) {
		this.serverIdStrategy = serverIdStrategy;
	}

	public long getReuseCachedSearchResultsMillis() {
		return reuseCachedSearchResultsMillis;
	}

	public void setReuseCachedSearchResultsMillis(long reuseCachedSearchResultsMillis) {
		this.reuseCachedSearchResultsMillis = reuseCachedSearchResultsMillis;
	}

	public boolean isExpungeEnabled() {
		return expungeEnabled;
	}

	public void setExpungeEnabled(boolean expungeEnabled) {
		this.expungeEnabled = expungeEnabled;
	}

	public boolean isDeleteExpungeEnabled() {
		return deleteExpungeEnabled;
	}

	public void setDeleteExpungeEnabled(boolean deleteExpungeEnabled) {
		this.deleteExpungeEnabled = deleteExpungeEnabled;
	}

	public boolean isAllowMultipleDelete() {
		return allowMultipleDelete;
	}

	public void setAllowMultipleDelete(boolean allowMultipleDelete) {
		this.allowMultipleDelete = allowMultipleDelete;
	}

	public boolean isBulkExportEnabled() {
		return bulkExportEnabled;
	}

	public void setBulkExportEnabled(boolean bulkExportEnabled) {
		this.bulkExportEnabled = bulkExportEnabled;
	}

	public int getBulkExportFileRetentionPeriodHours() {
		return bulkExportFileRetentionPeriodHours;
	}

	public void setBulkExportFileRetentionPeriodHours(int bulkExportFileRetentionPeriodHours) {
		this.bulkExportFileRetentionPeriodHours = bulkExportFileRetentionPeriodHours;
	}

	public int getDefaultPageSize() {
		return defaultPageSize;
	}

	public void setDefaultPageSize(int defaultPageSize) {
		this.defaultPageSize = defaultPageSize;
	}

	public int getMaxPageSize() {
		return maxPageSize;
	}

	public void setMaxPageSize(int maxPageSize) {
		this.maxPageSize = maxPageSize;
	}

	public long getBatch2MaintenanceIntervalMs() {
		return batch2MaintenanceIntervalMs;
	}

	public void setBatch2MaintenanceIntervalMs(long batch2MaintenanceIntervalMs) {
		this.batch2MaintenanceIntervalMs = batch2MaintenanceIntervalMs;
	}

	public Subscription getSubscription() {
		return subscription;
	}

	public Cors getCors() {
		return cors;
	}

	public Validation getValidation() {
		return validation;
	}
}
