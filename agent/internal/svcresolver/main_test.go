package svcresolver_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, kubetest.LeakOptions()...) }
