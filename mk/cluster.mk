# kind end-to-end targets, for a machine with a Docker engine and kind installed.
# Each one is a step of hack/kind-e2e.sh; settings (KIND_CLUSTER, NAMESPACE, IMAGE_TAG, ...)
# are environment variables documented at the top of that script and in docs/deploy.md.
KIND_E2E := hack/kind-e2e.sh

.PHONY: kind-preflight kind-up images kind-load deploy kind-e2e kind-down sync-crds

kind-preflight: tools ## Check kind, the server version and the nodes' allocatable CPU and memory.
	$(KIND_E2E) preflight

kind-up: ## Create the kind cluster (KIND_CLUSTER=susy).
	$(KIND_E2E) up

images: ## Build the pipeline and operator images (images/Dockerfile; a local base where no registry answers).
	hack/build-images.sh

kind-load: ## Load both images into the kind cluster.
	$(KIND_E2E) load

deploy: tools ## helm install susy-platform and susy-operator into NAMESPACE=susy, then helm test.
	$(KIND_E2E) deploy

kind-e2e: tools ## kind-up, images, kind-load, deploy, then a TrainingRun and an EvaluationRun to Succeeded.
	$(KIND_E2E) all

kind-down: ## Delete the kind cluster.
	$(KIND_E2E) down

sync-crds: ## Copy manifests/crds/*.yaml into charts/susy-operator/crds/ (a test checks they match).
	mkdir -p charts/susy-operator/crds
	rm -f charts/susy-operator/crds/*.yaml
	cp manifests/crds/*.yaml charts/susy-operator/crds/
