package org.meoring.hapi;

import ca.uhn.fhir.batch2.api.IJobMaintenanceService;
import ca.uhn.fhir.batch2.jobs.export.BulkDataExportProvider;
import ca.uhn.fhir.batch2.maintenance.JobMaintenanceServiceImpl;
import ca.uhn.fhir.context.ConfigurationException;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.binary.api.IBinaryStorageSvc;
import ca.uhn.fhir.jpa.binstore.DatabaseBinaryContentStorageSvcImpl;
import ca.uhn.fhir.jpa.config.JpaConfig;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.provider.SubscriptionTriggeringProvider;
import ca.uhn.fhir.jpa.provider.ValueSetOperationProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.jpa.util.LoggingEmailSender;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.HardcodedServerAddressStrategy;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.CorsInterceptor;
import ca.uhn.fhir.rest.server.interceptor.LoggingInterceptor;
import ca.uhn.fhir.rest.server.interceptor.RequestValidatingInterceptor;
import ca.uhn.fhir.rest.server.interceptor.ResponseValidatingInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import ca.uhn.fhir.validation.IInstanceValidatorModule;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import jakarta.annotation.PostConstruct;
import jakarta.persistence.EntityManagerFactory;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import javax.sql.DataSource;
import org.hl7.fhir.dstu2.model.Subscription.SubscriptionChannelType;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.beans.factory.annotation.Qualifier;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.context.properties.bind.Bindable;
import org.springframework.boot.context.properties.bind.Binder;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Primary;
import org.springframework.core.env.Environment;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.web.cors.CorsConfiguration;

/**
 * The beans HAPI's JPA configuration expects the application to provide, plus the FHIR servlet.
 * Written for Meoring Hub; the bean list follows what HAPI's JpaConfig/batch2/subscription
 * configurations autowire.
 */
@Configuration
public class FhirServerConfig {

	private static final Logger ourLog = LoggerFactory.getLogger(FhirServerConfig.class);

	private final HapiProperties myProps;

	public FhirServerConfig(HapiProperties theProps) {
		myProps = theProps;
		if (!"R4".equalsIgnoreCase(theProps.getFhirVersion())) {
			throw new ConfigurationException(
					"hapi.fhir.fhir_version=" + theProps.getFhirVersion() + " is not supported: this server is R4 only");
		}
	}

	/** All JPA server behaviour switches. */
	@Bean
	public JpaStorageSettings storageSettings() {
		JpaStorageSettings s = new JpaStorageSettings();
		s.setAllowExternalReferences(myProps.isAllowExternalReferences());
		s.setEnforceReferentialIntegrityOnWrite(myProps.isEnforceReferentialIntegrityOnWrite());
		s.setEnforceReferentialIntegrityOnDelete(myProps.isEnforceReferentialIntegrityOnDelete());
		s.setAutoCreatePlaceholderReferenceTargets(myProps.isAutoCreatePlaceholderReferenceTargets());
		s.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.valueOf(
				myProps.getClientIdStrategy().toUpperCase(Locale.ROOT)));
		s.setResourceServerIdStrategy(
				JpaStorageSettings.IdStrategyEnum.valueOf(myProps.getServerIdStrategy().toUpperCase(Locale.ROOT)));
		// null = never reuse a cached search: tests read their own writes.
		long reuse = myProps.getReuseCachedSearchResultsMillis();
		s.setReuseCachedSearchResultsForMillis(reuse < 0 ? null : reuse);
		s.setExpungeEnabled(myProps.isExpungeEnabled());
		s.setDeleteExpungeEnabled(myProps.isDeleteExpungeEnabled());
		s.setAllowMultipleDelete(myProps.isAllowMultipleDelete());
		s.setEnableTaskBulkExportJobExecution(myProps.isBulkExportEnabled());
		s.setBulkExportFileRetentionPeriodHours(myProps.getBulkExportFileRetentionPeriodHours());
		// Let batch2 trigger a maintenance pass as soon as a job's step completes
		// instead of waiting for the next scheduled pass.
		s.setJobFastTrackingEnabled(true);
		return s;
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		SubscriptionSettings s = new SubscriptionSettings();
		if (myProps.getSubscription().isResthookEnabled()) {
			s.addSupportedSubscriptionType(SubscriptionChannelType.RESTHOOK);
		}
		s.setSubscriptionChangeQueuedImmediately(myProps.getSubscription().isImmediatelyQueued());
		s.setSubscriptionIntervalInMs(myProps.getSubscription().getPollingIntervalMs());
		return s;
	}

	/** Partitioning off. */
	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	/**
	 * HAPI's entity manager factory (its own persistence provider and JPA dialect); the Hibernate
	 * properties come from {@code spring.jpa.properties.*} in application.yaml.
	 */
	@Bean
	@Primary
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory theBeanFactory,
			FhirContext theFhirContext,
			JpaStorageSettings theStorageSettings,
			DataSource theDataSource,
			Environment theEnvironment) {
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(theBeanFactory, theFhirContext, theStorageSettings);
		emf.setPersistenceUnitName("HAPI_PU");
		emf.setDataSource(theDataSource);
		Map<String, String> jpaProps = Binder.get(theEnvironment)
				.bind("spring.jpa.properties", Bindable.mapOf(String.class, String.class))
				.orElse(Map.of());
		Properties props = new Properties();
		props.putAll(jpaProps);
		ourLog.info("Hibernate properties: {}", props);
		emf.setJpaProperties(props);
		return emf;
	}

	@Bean
	@Primary
	public JpaTransactionManager transactionManager(EntityManagerFactory theEntityManagerFactory) {
		JpaTransactionManager tm = new JpaTransactionManager();
		tm.setEntityManagerFactory(theEntityManagerFactory);
		return tm;
	}

	/** Required by the subscription delivery factory; e-mail subscriptions are not enabled. */
	@Bean
	public IEmailSender emailSender() {
		return new LoggingEmailSender();
	}

	/** Binary content (e.g. bulk export files when externalised) lives in the database. */
	@Bean
	public IBinaryStorageSvc binaryStorageSvc() {
		return new DatabaseBinaryContentStorageSvcImpl();
	}

	/** Speed up the batch2 maintenance pass (default 60 s) so $export finishes in seconds. */
	@Autowired
	private IJobMaintenanceService myJobMaintenanceService;

	@PostConstruct
	public void tuneBatch2() {
		if (myJobMaintenanceService instanceof JobMaintenanceServiceImpl impl) {
			impl.setScheduledJobFrequencyMillis(myProps.getBatch2MaintenanceIntervalMs());
		}
	}

	@Bean
	public RestfulServer restfulServer(
			FhirContext theFhirContext,
			IFhirSystemDao<?, ?> theSystemDao,
			@Qualifier("myResourceProvidersR4") ResourceProviderFactory theResourceProviders,
			@Qualifier("mySystemProviderR4") JpaSystemProvider<?, ?> theSystemProvider,
			JpaStorageSettings theStorageSettings,
			ISearchParamRegistry theSearchParamRegistry,
			@Qualifier(JpaConfig.JPA_VALIDATION_SUPPORT_CHAIN) IValidationSupport theValidationSupport,
			IInstanceValidatorModule theInstanceValidator,
			DatabaseBackedPagingProvider thePagingProvider,
			BulkDataExportProvider theBulkDataExportProvider,
			ValueSetOperationProvider theValueSetOperationProvider,
			SubscriptionTriggeringProvider theSubscriptionTriggeringProvider) {

		RestfulServer server = new RestfulServer(theFhirContext);
		server.registerProviders(theResourceProviders.createProviders());
		server.registerProvider(theSystemProvider);
		server.registerProvider(theValueSetOperationProvider);
		server.registerProvider(theSubscriptionTriggeringProvider);
		if (myProps.isBulkExportEnabled()) {
			server.registerProvider(theBulkDataExportProvider);
		}

		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, theSystemDao, theStorageSettings, theSearchParamRegistry, theValidationSupport);
		capabilities.setImplementationDescription("Meoring Hub embedded HAPI FHIR R4 server");
		server.setServerConformanceProvider(capabilities);

		thePagingProvider.setDefaultPageSize(myProps.getDefaultPageSize());
		thePagingProvider.setMaximumPageSize(myProps.getMaxPageSize());
		server.setPagingProvider(thePagingProvider);

		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		server.setDefaultPrettyPrint(true);
		if (myProps.getServerAddress() != null && !myProps.getServerAddress().isBlank()) {
			server.setServerAddressStrategy(new HardcodedServerAddressStrategy(myProps.getServerAddress()));
		} else {
			server.setServerAddressStrategy(new IncomingRequestAddressStrategy());
		}

		LoggingInterceptor access = new LoggingInterceptor();
		access.setLoggerName("fhir.access");
		access.setMessageFormat(
				"${requestVerb} ${requestUrl}${requestParameters} -> ${operationType} ${idOrResourceName} ${processingTimeMillis}ms");
		access.setErrorMessageFormat("ERROR ${requestVerb} ${requestUrl}${requestParameters} - ${exceptionMessage}");
		access.setLogExceptions(true);
		server.registerInterceptor(access);

		if (myProps.getCors().isEnabled()) {
			server.registerInterceptor(corsInterceptor());
		}
		if (myProps.getValidation().isRequestsEnabled()) {
			RequestValidatingInterceptor v = new RequestValidatingInterceptor();
			v.setFailOnSeverity(ResultSeverityEnum.ERROR);
			v.setValidatorModules(List.of(theInstanceValidator));
			server.registerInterceptor(v);
		}
		if (myProps.getValidation().isResponsesEnabled()) {
			ResponseValidatingInterceptor v = new ResponseValidatingInterceptor();
			v.setFailOnSeverity(ResultSeverityEnum.ERROR);
			v.setValidatorModules(List.of(theInstanceValidator));
			server.registerInterceptor(v);
		}
		return server;
	}

	private CorsInterceptor corsInterceptor() {
		CorsConfiguration config = new CorsConfiguration();
		for (String header : List.of(
				"Origin",
				"Accept",
				"Content-Type",
				"Authorization",
				"Cache-Control",
				"Prefer",
				"If-Match",
				"If-None-Match",
				"If-None-Exist",
				"If-Modified-Since",
				"X-Requested-With",
				"X-Request-ID")) {
			config.addAllowedHeader(header);
		}
		myProps.getCors().getAllowedOrigin().forEach(config::addAllowedOriginPattern);
		for (String header : List.of("Location", "Content-Location", "ETag", "Last-Modified", "X-Progress", "Retry-After")) {
			config.addExposedHeader(header);
		}
		config.setAllowedMethods(List.of("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"));
		config.setAllowCredentials(myProps.getCors().isAllowCredentials());
		return new CorsInterceptor(config);
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(
			RestfulServer theServer, ConfigurableListableBeanFactory theBeanFactory) {
		theBeanFactory.autowireBean(theServer);
		ServletRegistrationBean<RestfulServer> reg = new ServletRegistrationBean<>(theServer, "/fhir/*");
		reg.setName("fhirServlet");
		reg.setLoadOnStartup(1);
		return reg;
	}
}
