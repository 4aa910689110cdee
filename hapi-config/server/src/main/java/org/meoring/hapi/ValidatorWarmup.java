package org.meoring.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.IInstanceValidatorModule;
import org.hl7.fhir.r4.model.Observation;
import org.hl7.fhir.r4.model.Patient;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.context.event.ApplicationReadyEvent;
import org.springframework.context.event.EventListener;
import org.springframework.stereotype.Component;

/**
 * The first {@code $validate} call costs several seconds (the instance validator loads and
 * snapshots the R4 core profiles). Do that once in the background right after startup so the
 * server answers /fhir/metadata as early as before and the first real $validate is fast.
 * Switch off with {@code --meoring.validator-warmup=false}.
 */
@Component
public class ValidatorWarmup {

	private static final Logger ourLog = LoggerFactory.getLogger(ValidatorWarmup.class);

	private final FhirContext myFhirContext;
	private final IInstanceValidatorModule myInstanceValidator;
	private final boolean myEnabled;

	public ValidatorWarmup(
			FhirContext theFhirContext,
			IInstanceValidatorModule theInstanceValidator,
			@Value("${meoring.validator-warmup:true}") boolean theEnabled) {
		myFhirContext = theFhirContext;
		myInstanceValidator = theInstanceValidator;
		myEnabled = theEnabled;
	}

	@EventListener(ApplicationReadyEvent.class)
	public void warmUp() {
		if (!myEnabled) {
			return;
		}
		Thread t = new Thread(
				() -> {
					long start = System.currentTimeMillis();
					try {
						FhirValidator validator = myFhirContext.newValidator();
						validator.registerValidatorModule(myInstanceValidator);
						Patient patient = new Patient();
						patient.addName().setFamily("Warmup");
						validator.validateWithResult(patient);
						Observation obs = new Observation();
						obs.setStatus(Observation.ObservationStatus.FINAL);
						obs.getCode().setText("warmup");
						validator.validateWithResult(obs);
						ourLog.info("Validator warm-up done in {} ms", System.currentTimeMillis() - start);
					} catch (Exception e) {
						ourLog.warn("Validator warm-up failed (harmless): {}", e.toString());
					}
				},
				"validator-warmup");
		t.setDaemon(true);
		t.setPriority(Thread.MIN_PRIORITY);
		t.start();
	}
}
