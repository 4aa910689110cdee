package org.meoring.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.SpringBootConfiguration;
import org.springframework.boot.autoconfigure.ImportAutoConfiguration;
import org.springframework.boot.autoconfigure.aop.AopAutoConfiguration;
import org.springframework.boot.autoconfigure.context.PropertyPlaceholderAutoConfiguration;
import org.springframework.boot.autoconfigure.jdbc.DataSourceAutoConfiguration;
import org.springframework.boot.autoconfigure.ssl.SslAutoConfiguration;
import org.springframework.boot.autoconfigure.web.embedded.EmbeddedWebServerFactoryCustomizerAutoConfiguration;
import org.springframework.boot.autoconfigure.web.servlet.HttpEncodingAutoConfiguration;
import org.springframework.boot.autoconfigure.web.servlet.ServletWebServerFactoryAutoConfiguration;
import org.springframework.boot.context.properties.EnableConfigurationProperties;
import org.springframework.context.annotation.Import;

/**
 * Meoring Hub's embedded HAPI FHIR JPA server (R4).
 *
 * <p>HAPI publishes no runnable JPA server on Maven Central (the hapi-fhir-jpaserver-starter is only
 * shipped as the {@code hapiproject/hapi} Docker image), so this is a small Spring Boot application
 * that wires HAPI's own Spring configuration classes together:
 * <ul>
 *   <li>{@link JpaR4Config}: FhirContext R4, the generated DAOs and resource providers, the system
 *       DAO/provider and everything in {@code JpaConfig} (search, transactions, expunge, validation
 *       support chain, bulk export support, scheduler, ...);</li>
 *   <li>{@link HapiJpaConfig}: the few beans JpaConfig leaves to the application (paging provider,
 *       stale search cleanup, full-text search service stubs, resource count cache);</li>
 *   <li>{@link JpaBatch2Config} + {@link Batch2JobsConfig}: the batch2 job framework and its jobs
 *       ($export, $reindex, $delete-expunge, ...);</li>
 *   <li>the three subscription configurations (submit, match/deliver, in-memory channels) for
 *       rest-hook subscriptions.</li>
 * </ul>
 * The beans HAPI expects the application to provide, and the RestfulServer servlet itself, are in
 * {@link FhirServerConfig}.
 *
 * <p>Spring Boot auto-configuration is a short explicit list instead of {@code @EnableAutoConfiguration}:
 * HAPI drags many libraries onto the classpath (Elasticsearch client, Thymeleaf, Quartz, Spring MVC,
 * Spring Data web, Gson, ...) whose auto-configurations would start things we do not want (an
 * Elasticsearch sniffer polling localhost:9200, a DispatcherServlet, Spring's own JPA setup) and
 * cost startup time. The only servlet is HAPI's RestfulServer at {@code /fhir/*}; the entity
 * manager factory is HAPI's own (see {@link FhirServerConfig#entityManagerFactory}).
 */
@SpringBootConfiguration
@ImportAutoConfiguration({
	PropertyPlaceholderAutoConfiguration.class,
	AopAutoConfiguration.class, // class-based (CGLIB) proxies, as in the official image
	SslAutoConfiguration.class,
	ServletWebServerFactoryAutoConfiguration.class, // embedded Tomcat, server.port
	EmbeddedWebServerFactoryCustomizerAutoConfiguration.class, // server.tomcat.*
	HttpEncodingAutoConfiguration.class, // UTF-8 request/response encoding
	DataSourceAutoConfiguration.class // spring.datasource.* (HikariCP + H2)
})
@EnableConfigurationProperties(HapiProperties.class)
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	SubscriptionSubmitterConfig.class,
	SubscriptionProcessorConfig.class,
	SubscriptionChannelConfig.class,
	ThreadPoolFactoryConfig.class,
	FhirServerConfig.class,
	ValidatorWarmup.class
})
public class HapiServerApplication {

	public static void main(String[] args) {
		SpringApplication.run(HapiServerApplication.class, args);
	}
}
